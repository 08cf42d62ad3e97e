"""Offline evaluation of cost models: `perfmodel evaluate` / `check`, their records, baselines' runs and reports."""
