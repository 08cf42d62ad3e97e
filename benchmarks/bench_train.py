"""Training speed of the default model on the shipped dataset: seconds per epoch and graphs per second.

Usage: python benchmarks/bench_train.py [--epochs 3] [--threads 1] [hydra overrides of conf/train.yaml...]

Times the hot loop only (forward, loss, backward, step over the train split, task-grouped batches),
after one warm-up epoch; the dataset is opened from the cache (built the first time).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("overrides", nargs="*", help="overrides of conf/train.yaml, e.g. model=gat")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    from hydra.utils import instantiate

    from perfmodel.training.train import build_module, compose_train

    cfg = compose_train(args.overrides, output_dir="/tmp/bench_train")
    torch.manual_seed(0)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    module = build_module(cfg, dm)
    model, loss_fn = module.model, module.loss_fn
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    loader = dm.train_dataloader()
    n_graphs = len(dm.splits["train"])

    def epoch() -> None:
        model.train()
        for batch in loader:
            batch = dm.on_after_batch_transfer(batch, 0)
            loss = loss_fn(model(batch), batch.y, batch.task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch()  # warm-up
    t = time.perf_counter()
    for _ in range(args.epochs):
        epoch()
    sec = (time.perf_counter() - t) / args.epochs
    name = str(cfg.model._target_).rsplit(".", 1)[-1]
    print(f"model {name}, {n_graphs} training graphs, batch {dm.batch_size}, {args.threads} threads, "
          f"{len(loader)} steps/epoch")
    print(f"{sec:.2f} s/epoch, {n_graphs / sec:.0f} graphs/s; default max_epochs={cfg.trainer.max_epochs} "
          f"-> ~{sec * cfg.trainer.max_epochs / 60:.1f} min of training steps")
    print(json.dumps({"model": name, "threads": args.threads, "train_graphs": n_graphs,
                      "seconds_per_epoch": round(sec, 3), "graphs_per_s": round(n_graphs / sec, 1)}))


if __name__ == "__main__":
    main()
