"""MetaSchedule plugin: the stage-graph GNN as a ``PyCostModel``, plus a timing/guard wrapper for any cost model."""

from perfmodel.predictor import DEFAULT_CHECKPOINT  # re-exported: the plugin's default
from perfmodel.plugin.cost_model import GNNCostModel, make_cost_model
from perfmodel.plugin.timed import TimedCostModel

__all__ = ["DEFAULT_CHECKPOINT", "GNNCostModel", "TimedCostModel", "make_cost_model"]
