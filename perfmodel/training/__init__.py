"""Lightning training of the stage-graph cost models: data module, task-grouped sampler, module, ``train(cfg)``."""

from perfmodel.training.datamodule import ScheduleDataModule
from perfmodel.training.module import CostModelModule
from perfmodel.training.sampler import TaskBatchSampler
from perfmodel.training.train import build_module, compose_train, main, train

__all__ = ["ScheduleDataModule", "CostModelModule", "TaskBatchSampler", "build_module", "compose_train", "main", "train"]
