"""Schedule -> features -> stage graph (networkx) or PyG ``Data`` / ``Batch``; the feature schema and its version.

The schema names import without TVM (``from perfmodel.featurize import NODE_FEATURES`` stays cheap
and TVM-free for model code); the featurizer itself loads TVM on first use.
"""

from __future__ import annotations

from typing import Any

from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION

_LAZY = {
    "Features": "perfmodel.featurize.graph",
    "content_key": "perfmodel.featurize.graph",
    "decision_signature": "perfmodel.featurize.graph",
    "features": "perfmodel.featurize.graph",
    "features_keyed": "perfmodel.featurize.graph",
    "features_many": "perfmodel.featurize.graph",
    "features_to_batch": "perfmodel.featurize.graph",
    "stage_graph": "perfmodel.featurize.graph",
    "graph_to_data": "perfmodel.featurize.graph",
    "featurize": "perfmodel.featurize.graph",
    "featurize_many": "perfmodel.featurize.graph",
    "paused_gc": "perfmodel.featurize.graph",
    "FeaturizeError": "perfmodel.featurize.tir",
}

__all__ = ["SCHEMA_VERSION", "NODE_FEATURES", "EDGE_FEATURES", "FeaturizeError", "Features", "content_key",
           "decision_signature", "features", "features_keyed", "features_many", "features_to_batch", "stage_graph",
           "graph_to_data", "featurize", "featurize_many", "paused_gc"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'perfmodel.featurize' has no attribute {name!r}")
