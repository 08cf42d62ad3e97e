"""Train a stage-graph cost model: `python train.py [model=gin] [experiment=smoke] [-m model=gcn,sage,gin]`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("PERFMODEL_ROOT", str(Path(__file__).resolve().parent))  # conf/paths: paths.root_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Trains, tests and prints the comparison table, then (last line) one JSON object of test metrics."""
    from perfmodel.training import main as run

    out = run(cfg)
    return out.get("test/pairwise_acc")  # the value a sweeper optimizes


if __name__ == "__main__":
    main()
