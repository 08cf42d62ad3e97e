"""Measured records -> PyG dataset of stage graphs (cached on disk); splits; feature normalization."""

from perfmodel.data.dataset import ScheduleDataset
from perfmodel.data.norm import FeatureNorm
from perfmodel.data.split import make_split

__all__ = ["ScheduleDataset", "make_split", "FeatureNorm"]
