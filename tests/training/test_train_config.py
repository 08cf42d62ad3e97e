"""Every config group of conf/train.yaml composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}",
                                                        f"paths.log_dir={tmp_path}", *overrides])


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("name", _options("model"))
def test_model_group(name: str, tmp_path: Path) -> None:
    from torch_geometric.data import Batch

    from perfmodel.training.synthetic import SyntheticDataset

    cfg = _cfg(tmp_path, f"model={name}")
    model = instantiate(cfg.model, in_dim=16, edge_dim=4)
    b = Batch.from_data_list([SyntheticDataset(n_tasks=1, per_task=3)[i] for i in range(3)])
    assert model(b).shape == (3,)


@pytest.mark.parametrize("name", _options("loss"))
def test_loss_group(name: str, tmp_path: Path) -> None:
    loss = instantiate(_cfg(tmp_path, f"loss={name}").loss)
    out = loss(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 2.0, 1.0]), torch.tensor([0, 0, 0]))
    assert out.ndim == 0 and float(out) > 0


@pytest.mark.parametrize("name", _options("data"))
def test_data_group(name: str, tmp_path: Path) -> None:
    dm = instantiate(_cfg(tmp_path, f"data={name}").data)  # building the dataset is left to setup()
    assert dm.batch_size > 0 and dm.split_kind in ("task", "random", "family")


@pytest.mark.parametrize("name", _options("trainer"))
def test_trainer_group(name: str, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, f"trainer={name}")
    if name == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.accelerator == "gpu"
        return
    if name == "ddp":  # two CPU processes; building the Trainer does not start them
        cfg.trainer.accelerator = "cpu"
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers(group: str, tmp_path: Path) -> None:
    for name in _options(group):
        cfg = _cfg(tmp_path, f"{group}={name}")
        objs = [instantiate(c) for c in cfg[group].values()]
        assert all(o is not None for o in objs)


@pytest.mark.parametrize("name", _options("experiment"))
def test_experiment_presets_compose(name: str, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, f"experiment={name}")
    assert cfg.trainer.max_epochs >= 1


def test_optimizer_and_scheduler(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(cfg.optim)(params=params)
    sched = instantiate(cfg.scheduler)(optimizer=opt)
    assert opt.param_groups[0]["lr"] == cfg.optim.lr and sched is not None


def test_compose_train_outside_hydra_main(tmp_path: Path) -> None:
    from perfmodel.training import compose_train

    cfg = compose_train(["data=synthetic"], output_dir=str(tmp_path))
    assert cfg.paths.output_dir == str(tmp_path) and cfg.paths.root_dir == str(REPO)
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"
