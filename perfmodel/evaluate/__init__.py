"""Offline evaluation of cost models: metric functions, baselines, `perfmodel evaluate` / `check`."""
