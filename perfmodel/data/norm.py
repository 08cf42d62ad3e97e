"""Feature normalization of stage graphs, fitted on the training split only, with a plain-tensor state."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION


class FeatureNorm:
    """Per-feature standardization of node features ``x`` and edge features ``edge_attr``.

    Constant features (std < ``eps``) are only centred. The state is plain tensors and ints
    (:meth:`state_dict`), so it fits in a ``weights_only`` checkpoint.

    Args:
        x_mean, x_std: [F] node-feature statistics.
        e_mean, e_std: [Fe] edge-feature statistics.
    """

    eps = 1e-6

    def __init__(self, *, x_mean: torch.Tensor, x_std: torch.Tensor, e_mean: torch.Tensor, e_std: torch.Tensor,
                 schema_version: int = SCHEMA_VERSION) -> None:
        self.x_mean = x_mean.float()
        self.x_std = torch.where(x_std < self.eps, torch.ones_like(x_std), x_std).float()
        self.e_mean = e_mean.float()
        self.e_std = torch.where(e_std < self.eps, torch.ones_like(e_std), e_std).float()
        self.schema_version = int(schema_version)

    @classmethod
    def fit(cls, datas: Iterable[Any]) -> FeatureNorm:
        """Statistics over every node / edge of ``datas`` (the training graphs)."""
        fx, fe = len(NODE_FEATURES), len(EDGE_FEATURES)
        sx = torch.zeros(fx, dtype=torch.float64)
        sxx = torch.zeros(fx, dtype=torch.float64)
        se = torch.zeros(fe, dtype=torch.float64)
        see = torch.zeros(fe, dtype=torch.float64)
        nx = ne = 0
        for d in datas:
            x = d.x.double()
            sx += x.sum(0)
            sxx += (x * x).sum(0)
            nx += x.shape[0]
            if d.edge_attr is not None and d.edge_attr.numel():
                e = d.edge_attr.double()
                se += e.sum(0)
                see += (e * e).sum(0)
                ne += e.shape[0]
        if nx == 0:
            raise ValueError("FeatureNorm.fit: no graphs (or no nodes) to fit on")
        xm = sx / nx
        xs = (sxx / nx - xm * xm).clamp_min(0).sqrt()
        em = se / max(ne, 1)
        es = (see / max(ne, 1) - em * em).clamp_min(0).sqrt()
        return cls(x_mean=xm, x_std=xs, e_mean=em, e_std=es)

    def apply(self, data: Any) -> Any:
        """A shallow copy of ``data`` with normalized ``x`` and ``edge_attr`` (works on batches too)."""
        out = data.clone() if hasattr(data, "clone") else data
        out.x = (data.x - self.x_mean) / self.x_std
        if getattr(data, "edge_attr", None) is not None and data.edge_attr.numel():
            out.edge_attr = (data.edge_attr - self.e_mean) / self.e_std
        return out

    __call__ = apply  # usable as a PyG transform

    def state_dict(self) -> dict[str, Any]:
        return {"x_mean": self.x_mean.clone(), "x_std": self.x_std.clone(), "e_mean": self.e_mean.clone(),
                "e_std": self.e_std.clone(), "schema_version": self.schema_version}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> FeatureNorm:
        """Rebuild from :meth:`state_dict`; refuses a state of another feature schema."""
        v = int(d.get("schema_version", -1))
        if v != SCHEMA_VERSION:
            raise ValueError(f"FeatureNorm state is for feature schema {v}, this perfmodel has {SCHEMA_VERSION}")
        if len(d["x_mean"]) != len(NODE_FEATURES) or len(d["e_mean"]) != len(EDGE_FEATURES):
            raise ValueError(f"FeatureNorm state has {len(d['x_mean'])} node / {len(d['e_mean'])} edge features, "
                             f"schema has {len(NODE_FEATURES)} / {len(EDGE_FEATURES)}")
        return cls(x_mean=torch.as_tensor(d["x_mean"]), x_std=torch.as_tensor(d["x_std"]),
                   e_mean=torch.as_tensor(d["e_mean"]), e_std=torch.as_tensor(d["e_std"]), schema_version=v)
