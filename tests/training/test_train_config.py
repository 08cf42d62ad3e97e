"""Every config group of conf/train.yaml composes, instantiates and does what it says; the one ``compose``."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from perfmodel.config import REPO, compose

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend

CONF = REPO / "conf"


def _cfg(tmp_path: Path, *overrides: str):
    return compose("train", [f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}",
                             *overrides])


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
def test_data_group_splits_and_batches(name: str, tmp_path: Path) -> None:
    from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES
    from perfmodel.training.synthetic import SyntheticDataset

    cfg = _cfg(tmp_path, f"data={name}")
    if name == "synthetic":
        dm = instantiate(cfg.data)
    else:  # the preset's split, batching and normalization, on synthetic graphs instead of the database
        ds = SyntheticDataset(n_tasks=20, per_task=8, node_dim=len(NODE_FEATURES), edge_dim=len(EDGE_FEATURES))
        ds.families = [cfg.data.holdout_family or "conv", "other"]  # the family preset's test family exists
        dm = instantiate(cfg.data, dataset=ds)
    dm.setup()
    parts = {k: set(dm.splits[k].tolist()) for k in ("train", "val", "test")}
    assert all(parts.values()), {k: len(v) for k, v in parts.items()}
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    if dm.split_kind != "random":  # held-out tasks or families: no task is on both sides
        tasks = {k: set(dm.task_ids[list(v)].tolist()) for k, v in parts.items()}
        assert not (tasks["train"] & tasks["test"])
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs <= dm.batch_size and len(batch.task.unique()) <= dm.tasks_per_batch
    assert (dm.norm is not None) == bool(cfg.data.get("normalize", False))


@pytest.mark.parametrize("name", _options("trainer"))
def test_trainer_group(name: str, tmp_path: Path) -> None:
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy

    cfg = _cfg(tmp_path, f"trainer={name}")
    if name == "gpu" and not torch.cuda.is_available():
        with pytest.raises(Exception, match="GPU|gpu|CUDA|cuda"):  # asks for a GPU, does not fall back to CPU
            instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        return
    if name == "ddp":  # two CPU processes; building the Trainer does not start them
        cfg.trainer.accelerator = "cpu"
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.default_root_dir == str(tmp_path)  # the run's folder, not the working directory
    if name == "ddp":
        assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    elif name == "cpu":
        assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices == 1


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers_write_into_the_run_folder(group: str, tmp_path: Path) -> None:
    from perfmodel.training.module import LOGGED

    logged = {f"{stage}/{name}" for stage in ("train", "val", "test") for name in LOGGED}
    for name in _options(group):
        cfg = _cfg(tmp_path, f"{group}={name}")
        for obj in (instantiate(c) for c in cfg[group].values()):
            monitor = getattr(obj, "monitor", None)
            assert monitor is None or monitor in logged, f"{group}={name}: {type(obj).__name__} watches {monitor!r}"
            folder = getattr(obj, "dirpath", None) or getattr(obj, "log_dir", None)
            if folder is not None:
                assert Path(folder).resolve().is_relative_to(tmp_path.resolve()), (group, name, folder)


@pytest.mark.parametrize("name", _options("experiment"))
def test_experiment_presets_only_set_known_keys(name: str, tmp_path: Path) -> None:
    base, missing = _cfg(tmp_path), object()
    preset = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    cfg = _cfg(tmp_path, f"experiment={name}")

    def leaves(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            out += leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
        return out

    raw = OmegaConf.to_container(cfg)  # unresolved: a preset may name paths through ${paths.data_dir}
    preset = {k: v for k, v in OmegaConf.to_container(preset).items() if k != "defaults"}  # not Hydra's list
    for key in leaves(preset):
        assert OmegaConf.select(base, key, default=missing) is not missing, \
            f"experiment={name} sets {key}, which conf/train.yaml does not have (a typo is silently added)"
        assert functools.reduce(dict.get, key.split("."), raw) == \
            functools.reduce(dict.get, key.split("."), preset)


def test_both_targets_preset_evaluates_on_one_of_its_folders(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "experiment=both_targets")
    assert cfg.data.eval_db in cfg.data.db_paths and len(cfg.data.db_paths) == 2
    assert cfg.data.eval_db.endswith("/amd-epyc-znver3-t1") and cfg.model.target_input is True
    assert _cfg(tmp_path).data.eval_db is None and _cfg(tmp_path).model.target_input is False  # off by default


def test_three_targets_preset_adds_the_zen5_folder_to_both_targets(tmp_path: Path) -> None:
    two, three = _cfg(tmp_path, "experiment=both_targets"), _cfg(tmp_path, "experiment=three_targets")
    assert list(three.data.db_paths[:2]) == list(two.data.db_paths) and three.data.db_paths[2].endswith("/amd-epyc-znver5-t1")
    assert three.data.eval_db == two.data.eval_db and three.model.target_input is True
    assert three.task_name == "three_targets" and three.data.split == two.data.split
    assert all(Path(p).is_dir() for p in three.data.db_paths)  # the shipped checkpoint's folders are in the repo


def test_four_targets_preset_adds_the_zen4_folder_to_three_targets(tmp_path: Path) -> None:
    three, four = _cfg(tmp_path, "experiment=three_targets"), _cfg(tmp_path, "experiment=four_targets")
    assert list(four.data.db_paths[:3]) == list(three.data.db_paths)
    assert four.data.db_paths[3].endswith("/amd-epyc-znver4-t1")
    assert four.data.eval_db == three.data.eval_db and four.model.target_input is True
    assert four.task_name == "four_targets" and four.data.split == three.data.split
    assert all(Path(p).is_dir() for p in four.data.db_paths)


def test_optimizer_and_scheduler_anneal_to_eta_min(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "trainer.max_epochs=5")
    params = [torch.nn.Parameter(torch.ones(2))]
    opt = instantiate(cfg.optim)(params=params)
    sched = instantiate(cfg.scheduler)(optimizer=opt)
    params[0].sum().backward()
    opt.step()
    assert torch.all(params[0] < 1)  # one step moved the parameters downhill
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(cfg.trainer.max_epochs):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]
    assert lrs[-1] == pytest.approx(cfg.scheduler.eta_min)  # T_max follows the epochs


def test_compose_train_outside_hydra_main(tmp_path: Path) -> None:
    from perfmodel.training import compose_train

    cfg = compose_train(["data=synthetic"], output_dir=str(tmp_path))
    assert cfg.paths.output_dir == str(tmp_path) and cfg.paths.root_dir == str(REPO)
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"


def test_compose_reads_the_folder_perfmodel_conf_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tune.yaml").write_text("trials: 7\n")
    monkeypatch.setenv("PERFMODEL_CONF", str(tmp_path))
    assert compose("tune", ["+seed=3"]) == {"trials": 7, "seed": 3}
    monkeypatch.delenv("PERFMODEL_CONF")
    assert compose("tune").trials != 7


def test_compose_train_reads_the_folder_perfmodel_conf_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from perfmodel.training import compose_train

    conf = shutil.copytree(CONF, tmp_path / "conf")
    (conf / "train.yaml").write_text((conf / "train.yaml").read_text().replace("task_name: train", "task_name: other"))
    monkeypatch.setenv("PERFMODEL_CONF", str(conf))
    assert compose_train(["data=synthetic"], output_dir=str(tmp_path)).task_name == "other"


def test_evaluation_reads_the_cache_that_training_writes(tmp_path: Path) -> None:
    from perfmodel.evaluate.evaluator import DEFAULT_CACHE

    assert Path(_cfg(tmp_path).data.root) == DEFAULT_CACHE  # else the held-out fallback builds a second cache
