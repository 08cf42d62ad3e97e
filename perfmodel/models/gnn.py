"""Stage-graph GNN cost models: one encoder base class, four convolutions, a readout and a head."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv, GCNConv, GINEConv, SAGEConv, global_mean_pool
from torch_geometric.nn.aggr import AttentionalAggregation, MaxAggregation, MeanAggregation, SumAggregation
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

from perfmodel.featurize.schema import NODE_INDEX

READOUTS = ("sum", "mean", "max", "attention", "sum_mean")


def _mlp(sizes: list[int], act: str, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given widths with ``act`` (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation_resolver(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Readout(nn.Module):
    """Pools node embeddings [N, H] into graph embeddings [B, H] (``sum_mean``: [B, 2H])."""

    def __init__(self, *, kind: str, hidden: int) -> None:
        super().__init__()
        if kind not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {kind!r}")
        self.kind = kind
        if kind == "attention":
            self.pool: nn.Module = AttentionalAggregation(gate_nn=nn.Linear(hidden, 1))
        elif kind == "mean":
            self.pool = MeanAggregation()
        elif kind == "max":
            self.pool = MaxAggregation()
        else:
            self.pool = SumAggregation()
        self.mean = MeanAggregation() if kind == "sum_mean" else None
        self.out_dim = 2 * hidden if kind == "sum_mean" else hidden

    def forward(self, h: Tensor, batch: Tensor, size: int) -> Tensor:
        """Args: h [N, H] node embeddings; batch [N] graph of each node; size B graphs."""
        out = self.pool(h, batch, dim_size=size)
        if self.mean is not None:
            out = torch.cat([out, self.mean(h, batch, dim_size=size)], dim=-1)
        return out


def log_work(flops: Any, io_bytes: Any = None, *, copy_work: bool = False) -> Tensor:
    """The operation count the model's scale inputs read, as a natural log, float64 [B]: ``log max(FLOPs, 1)``;
    with ``copy_work`` a graph with FLOPs < 1 (a pure copy) counts its argument bytes ``io_bytes`` instead.
    The one definition for training's standardization and the model's inputs."""
    f = torch.as_tensor(flops, dtype=torch.float64).reshape(-1)
    if copy_work:
        nb = torch.as_tensor(io_bytes, dtype=torch.float64).reshape(-1)
        f = torch.where(f < 1.0, nb, f)
    return torch.log(f.clamp_min(1.0))


def _io_bytes(data: Any, option: str) -> Tensor:
    """The graphs' ``io_bytes``, which the model's ``option`` reads; one line saying what to do when absent."""
    nb = getattr(data, "io_bytes", None)
    if nb is None:
        raise ValueError(f"this model uses io_bytes ({option}) but the graphs have none: featurize them with this "
                         "version of perfmodel (dataset caches rebuild themselves)")
    return nb


class CostGNN(nn.Module):
    """Predicts the log run time (seconds) of a scheduled program from its stage graph.

    The encoder embeds node features, runs ``num_layers`` graph convolutions (each followed by
    norm, activation, dropout and a residual connection), pools the nodes with a readout, and
    an MLP head maps the graph embedding plus the graph's standardized log FLOPs to a log time.
    With ``flops_skip`` the head's output is added to ``a * log(flops) + b`` (a, b learned), so the
    network only learns the efficiency left over by the operation count. With ``use_bytes`` the
    graph's argument bytes (``io_bytes``: the traffic no schedule avoids) join the FLOPs in both
    places, head input and skip (``a * log(flops) + c * log(bytes) + b``): the two sides of a roofline
    bound, so memory-bound operators (pooling, normalization, element-wise) get a prior too. With
    ``target_input`` the head also gets a learned embedding of the graph's ``target_id`` (the TVM target
    its record was measured for), so one model can learn from several hardware folders.

    Subclasses only say which convolution they stack (``make_conv``), like PyG's ``BasicGNN``.

    Args:
        in_dim: node feature width F.
        edge_dim: edge feature width Fe (0 = no edge features).
        hidden: embedding width H.
        num_layers: graph convolutions.
        readout: one of ``READOUTS``.
        head_layers: hidden layers of the head MLP.
        dropout: dropout after each convolution and in the head.
        act: activation name (PyG resolver, e.g. ``relu``, ``gelu``, ``silu``).
        norm: normalization name for the convolutions (``layer_norm``, ``batch_norm``, ``graph_norm``) or None.
        bidirectional: also pass messages consumer -> producer (edges reversed, one extra edge
            feature says which direction).
        use_flops: give the head the graph's standardized log FLOPs.
        flops_skip: add a learned linear term in log FLOPs to the prediction.
        use_bytes: also use the graph's standardized log argument bytes (``io_bytes``), as above.
        copy_work: a graph without FLOPs (a copy: reshape, transpose, slice) counts its argument bytes
            (``io_bytes``) as its operation count in the log-FLOPs inputs (:func:`log_work`), instead of
            ``log 1 = 0``, which lies ~9 standard deviations below every computing graph (RESULTS, #11).
        virtual_node: a virtual node that sees the whole nest (Gilmer et al. 2017; the OGB recipe): after
            each convolution but the last, the graph's mean node embedding plus the previous virtual state
            goes through an MLP, and the result is added to every node before the next convolution. A stage
            then hears of stages more hops away than ``num_layers`` (a long fused epilogue, a padding stage).
        target_input: entries of the target embedding (the vocabulary size of ``target_id``; 0 = no
            target input: ``target_id`` is ignored and not needed).
        drop_features: node feature names (``NODE_FEATURES``) the model does not see: set to their
            training mean (0 after standardization) before the embedding. An ablation knob: train with
            and without a feature group in the same code and data (benchmarks/RESULTS.md, #11).
        conv_kwargs: extra keyword arguments of the convolution (e.g. ``heads`` for GAT).
    """

    conv_name = "base"
    uses_edge_attr = False
    target_dim = 8  # width of the target embedding joined to the head input

    def __init__(
        self,
        *,
        in_dim: int,
        edge_dim: int = 0,
        hidden: int = 64,
        num_layers: int = 3,
        readout: str = "sum",
        head_layers: int = 2,
        dropout: float = 0.0,
        act: str = "relu",
        norm: str | None = "layer_norm",
        bidirectional: bool = True,
        use_flops: bool = True,
        flops_skip: bool = True,
        use_bytes: bool = False,
        copy_work: bool = False,
        virtual_node: bool = False,
        target_input: int = 0,
        drop_features: Sequence[str] = (),
        **conv_kwargs: Any,
    ) -> None:
        super().__init__()
        self.drop_features = [str(n) for n in drop_features or ()]
        keep = torch.ones(in_dim)
        for n in self.drop_features:
            i = NODE_INDEX.get(n)
            if i is None or i >= in_dim:
                raise ValueError(f"drop_features: {n!r} is not a node feature of this schema (NODE_FEATURES)")
            keep[i] = 0.0
        self.register_buffer("keep", keep if self.drop_features else None, persistent=False)
        if target_input is True or int(target_input or 0) < 0:
            raise ValueError(f"target_input is the number of targets (0 = off), got {target_input!r}; "
                             "training sets it from the dataset's target vocabulary")
        self.target_input = int(target_input or 0)
        self.in_dim, self.edge_dim, self.hidden = in_dim, edge_dim, hidden
        self.bidirectional, self.use_flops, self.flops_skip = bidirectional, use_flops, flops_skip
        self.use_bytes, self.copy_work = use_bytes, bool(copy_work)
        n_scale = 2 if use_bytes else 1  # graph-level scale inputs: log FLOPs (and log bytes)
        self.conv_kwargs = conv_kwargs
        e_in = edge_dim + (1 if bidirectional else 0)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), activation_resolver(act))
        self.edge_embed = nn.Linear(e_in, hidden) if (self.uses_edge_attr and e_in > 0) else None
        self.convs = nn.ModuleList(self.make_conv(hidden, e_in) for _ in range(num_layers))
        self.norms = nn.ModuleList(_norm(norm, hidden) for _ in range(num_layers))
        self.vn_mlps = (nn.ModuleList(_mlp([hidden, hidden, hidden], act) for _ in range(num_layers - 1))
                        if virtual_node else None)
        self._norm_batch = [_takes_batch(n) for n in self.norms]
        self.act = activation_resolver(act)
        self.dropout = nn.Dropout(dropout)
        self.readout = Readout(kind=readout, hidden=hidden)
        self.target_embed = nn.Embedding(self.target_input, self.target_dim) if self.target_input else None
        head_in = (self.readout.out_dim + (n_scale if use_flops else 0)
                   + (self.target_dim if self.target_input else 0))
        self.head = _mlp([head_in] + [hidden] * head_layers + [1], act, dropout)
        self.skip = nn.Linear(n_scale, 1) if flops_skip else None
        # Standardization of log FLOPs (and log bytes); set from the training set by ``set_flops_stats``.
        self.register_buffer("flops_mean", torch.tensor(0.0))
        self.register_buffer("flops_std", torch.tensor(1.0))
        if use_bytes:
            self.register_buffer("bytes_mean", torch.tensor(0.0))
            self.register_buffer("bytes_std", torch.tensor(1.0))
        if self.skip is not None:  # start from "time grows like FLOPs"
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)

    def make_conv(self, hidden: int, edge_dim: int) -> nn.Module:
        """One graph convolution H -> H (edge features, when used, are already embedded to H)."""
        raise NotImplementedError

    def conv_forward(self, conv: nn.Module, h: Tensor, edge_index: Tensor, e: Tensor | None) -> Tensor:
        """Calls one convolution; ``e`` is its entry of ``edge_inputs`` (the embedded edge features) or None."""
        return conv(h, edge_index)

    def edge_inputs(self, ea: Tensor) -> list[Tensor]:
        """The edge input of each convolution, from the edge features [E, Fe(+1)]: the embedded edge
        features [E, H] (the raw ones without an edge embedding), the same for every layer."""
        e = self.edge_embed(ea) if self.edge_embed is not None else ea
        return [e] * len(self.convs)

    @torch.no_grad()
    def set_flops_stats(self, log_flops: Tensor, log_secs: Tensor | None = None,
                        log_bytes: Tensor | None = None) -> None:
        """Fits the log-FLOPs (and log-bytes) standardization to the training graphs, and starts the
        prediction at the least-squares fit ``log_secs ~ a * log FLOPs (+ c * log bytes) + b`` (or at
        their mean).

        Args:
            log_flops: natural log of each training graph's FLOPs, [B].
            log_secs: their measured log seconds, [B] (None: leave the output layer as is).
            log_bytes: natural log of each graph's ``io_bytes``, [B]; required with ``use_bytes``.
        """
        zs = [self._standardize(log_flops, self.flops_mean, self.flops_std)]
        if self.use_bytes:
            if log_bytes is None:
                raise ValueError("set_flops_stats: this model uses io_bytes (use_bytes=True): pass log_bytes")
            zs.append(self._standardize(log_bytes, self.bytes_mean, self.bytes_std))
        if log_secs is None:
            return
        y = log_secs.double().reshape(-1)
        z = torch.stack(zs, dim=1)  # [B, n_scale]
        if z.size(0) > z.size(1):
            zc = z - z.mean(0)
            coef = torch.linalg.lstsq(zc, (y - y.mean())[:, None], driver="gelsd").solution[:, 0]
        else:
            coef = torch.zeros(z.size(1), dtype=torch.float64)
        b = float(y.mean() - (z.mean(0) * coef).sum())
        last = self.head[-1]
        if self.skip is not None:
            self.skip.weight.copy_(coef[None, :].to(self.skip.weight.dtype))
            self.skip.bias.fill_(b)
            last.bias.zero_()
        else:
            last.bias.fill_(float(y.mean()))

    @staticmethod
    def _standardize(v: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """Fits ``mean``/``std`` (buffers) to ``v`` [B] and returns the standardized values (float64)."""
        v = v.double().reshape(-1)
        mean.fill_(float(v.mean()))
        std.fill_(max(float(v.std()) if v.numel() > 1 else 1.0, 1e-3))
        return (v - mean.double()) / std.double()

    def log_flops(self, data: Any) -> Tensor:
        """Standardized log FLOPs (:func:`log_work`) of each graph, [B]."""
        nb = _io_bytes(data, "copy_work=True") if self.copy_work else None
        lw = log_work(data.flops, nb, copy_work=self.copy_work).to(self.flops_mean.dtype)
        return (lw - self.flops_mean) / self.flops_std

    def log_bytes(self, data: Any) -> Tensor:
        """Standardized log argument bytes (``io_bytes``) of each graph, [B]."""
        nb = _io_bytes(data, "use_bytes=True").reshape(-1).to(self.bytes_mean.dtype)
        return (torch.log(nb.clamp_min(1.0)) - self.bytes_mean) / self.bytes_std

    def scale_inputs(self, data: Any) -> Tensor:
        """The graph-level scale inputs [B, n_scale]: standardized log FLOPs (and log bytes)."""
        cols = [self.log_flops(data)]
        if self.use_bytes:
            cols.append(self.log_bytes(data))
        return torch.stack(cols, dim=1)

    def target_inputs(self, data: Any) -> Tensor:
        """The embedded ``target_id`` of each graph, [B, target_dim]."""
        tid = getattr(data, "target_id", None)
        if tid is None:
            raise ValueError("this model takes the target as input (target_input > 0) but the graphs have no "
                             "target_id: score them with perfmodel.predictor.Predictor (it sets the id)")
        tid = tid.reshape(-1)
        if tid.numel() and (int(tid.min()) < 0 or int(tid.max()) >= self.target_input):
            raise ValueError(f"target_id outside the model's {self.target_input} targets "
                             f"(0..{self.target_input - 1}): {tid.unique().tolist()}")
        return self.target_embed(tid)

    def _edges(self, data: Any) -> tuple[Tensor, Tensor | None]:
        ei = data.edge_index
        ea = getattr(data, "edge_attr", None)
        if ea is None or self.edge_dim == 0:
            ea = ei.new_zeros((ei.size(1), 0), dtype=torch.float32)
        if self.bidirectional:
            fwd = torch.cat([ea, ea.new_zeros(ea.size(0), 1)], dim=1)
            bwd = torch.cat([ea, ea.new_ones(ea.size(0), 1)], dim=1)
            ei = torch.cat([ei, ei.flip(0)], dim=1)
            ea = torch.cat([fwd, bwd], dim=0)
        return ei, ea

    def forward(self, data: Any) -> Tensor:
        """Predicted log seconds [B] of a PyG ``Batch`` (fields x [N, F], edge_index [2, E],
        edge_attr [E, Fe], batch [N], flops [B], with ``target_input`` target_id [B]); a single ``Data`` gives [1]."""
        return self.forward_embedding(data)[0]

    def forward_embedding(self, data: Any) -> tuple[Tensor, Tensor]:
        """``forward``'s prediction [B] and the head's input [B, D] (pooled graph + scale + target
        inputs): the embedding an online per-task correction is fitted on."""
        x = data.x
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
        size = int(data.num_graphs) if hasattr(data, "num_graphs") else int(batch.max()) + 1
        edge_index, ea = self._edges(data)
        h = self.embed(x if self.keep is None else x * self.keep)
        vn: Tensor | None = None  # the virtual node's state [B, H] (``virtual_node``)
        layers = zip(self.convs, self.norms, self._norm_batch, self.edge_inputs(ea))
        for i, (conv, norm, nb, e) in enumerate(layers):
            if vn is not None:
                h = h + vn.index_select(0, batch)
            out = self.conv_forward(conv, h, edge_index, e)
            out = norm(out, batch, size) if nb else norm(out)
            h = h + self.dropout(self.act(out))
            if self.vn_mlps is not None and i < len(self.vn_mlps):
                pooled = global_mean_pool(h, batch, size)
                vn = self.vn_mlps[i](pooled if vn is None else pooled + vn)
        g = self.readout(h, batch, size)
        sc = self.scale_inputs(data).to(g.dtype)
        if self.use_flops:
            g = torch.cat([g, sc], dim=-1)
        if self.target_embed is not None:
            g = torch.cat([g, self.target_inputs(data).to(g.dtype)], dim=-1)
        y = self.head(g).squeeze(-1)
        if self.skip is not None:
            y = y + self.skip(sc).squeeze(-1)
        return y, g

    def outputs_and_embedding(self, data: Any) -> tuple[Tensor, Tensor]:
        """Predicted log seconds as one member [1, B], and the embedding [B, D] (``forward_embedding``)."""
        y, g = self.forward_embedding(data)
        return y.unsqueeze(0), g


def _norm(name: str | None, hidden: int) -> nn.Module:
    # ``layer_norm`` is node-wise (torch's); other names go to PyG's resolver (batch_norm, graph_norm...).
    if not name:
        return nn.Identity()
    if name == "layer_norm":
        return nn.LayerNorm(hidden)
    return normalization_resolver(name, hidden)


def _takes_batch(norm: nn.Module) -> bool:
    # PyG's graph-aware norms (GraphNorm, InstanceNorm...) take (x, batch, batch_size).
    return "batch" in inspect.signature(norm.forward).parameters


class GCN(CostGNN):
    """Graph convolutions (Kipf & Welling) as in the graph-convolution cost model of Singh et al.

    GCN weighs edges by a scalar only: with edge features, a learned sigmoid gate of them.
    """

    conv_name = "gcn"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        e_in = self.edge_dim + (1 if self.bidirectional else 0)
        self.edge_gate = nn.Linear(e_in, 1) if e_in > 0 else None

    def make_conv(self, hidden: int, edge_dim: int) -> nn.Module:
        return GCNConv(hidden, hidden, **self.conv_kwargs)

    def conv_forward(self, conv: nn.Module, h: Tensor, edge_index: Tensor, e: Tensor | None) -> Tensor:
        w = torch.sigmoid(self.edge_gate(e)).squeeze(-1) if (self.edge_gate is not None and e is not None) else None
        return conv(h, edge_index, edge_weight=w)


class SAGE(CostGNN):
    """GraphSAGE convolutions (mean aggregation by default; no edge features)."""

    conv_name = "sage"

    def make_conv(self, hidden: int, edge_dim: int) -> nn.Module:
        return SAGEConv(hidden, hidden, **self.conv_kwargs)


class GINE(CostGNN):
    """GIN convolutions with edge features (GINE, Hu et al.): MLP((1 + eps) h_i + sum_j relu(h_j + W e_ij)).

    Inference (eval mode, ``fuse_edges``) composes each layer's edge projection ``W`` with the edge
    embedding into one map from the raw edge features: the same function (up to float rounding),
    without an [H, H] product per edge and layer, which is most of the work on graphs with as many
    edges as nodes. Training runs PyG's ``GINEConv`` as is.
    """

    conv_name = "gin"
    uses_edge_attr = True
    fuse_edges = True  # eval mode: one composed edge map per layer (False: PyG's GINEConv, as in training)

    def make_conv(self, hidden: int, edge_dim: int) -> nn.Module:
        mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        return GINEConv(mlp, train_eps=True, edge_dim=hidden if edge_dim > 0 else None, **self.conv_kwargs)

    def _fused(self) -> bool:
        return (self.fuse_edges and not self.training and self.edge_embed is not None
                and all(c.lin is not None for c in self.convs))

    def edge_inputs(self, ea: Tensor) -> list[Tensor]:
        """Fused: each layer's projected edge term ``lin(edge_embed(ea))`` [E, H], computed as
        ``ea @ (W_lin W_embed)^T + (W_lin b_embed + b_lin)``; else the embedded edge features."""
        if not self._fused():
            return super().edge_inputs(ea)
        w, b = self.edge_embed.weight, self.edge_embed.bias
        out = []
        for c in self.convs:
            bias = c.lin.weight @ b
            if c.lin.bias is not None:
                bias = bias + c.lin.bias
            out.append(nn.functional.linear(ea, c.lin.weight @ w, bias))
        return out

    def conv_forward(self, conv: nn.Module, h: Tensor, edge_index: Tensor, e: Tensor | None) -> Tensor:
        if e is None or e.size(-1) == 0:
            e = h.new_zeros(edge_index.size(1), h.size(-1))
        if not self._fused():
            return conv(h, edge_index, e)
        # GINEConv (sum aggregation, messages source -> target) with its edge projection already in ``e``
        msg = (h.index_select(0, edge_index[0]) + e).relu()
        out = torch.zeros_like(h).index_add_(0, edge_index[1], msg)
        return conv.nn(out + (1 + conv.eps) * h)


class GAT(CostGNN):
    """Graph attention convolutions (GATv2) with edge features in the attention; heads averaged."""

    conv_name = "gat"
    uses_edge_attr = True

    def make_conv(self, hidden: int, edge_dim: int) -> nn.Module:
        kw = {"heads": 4, **self.conv_kwargs}
        return GATv2Conv(hidden, hidden, concat=False, edge_dim=hidden if edge_dim > 0 else None, **kw)

    def conv_forward(self, conv: nn.Module, h: Tensor, edge_index: Tensor, e: Tensor | None) -> Tensor:
        if e is None or e.size(-1) == 0:
            return conv(h, edge_index)
        return conv(h, edge_index, edge_attr=e)


MODELS: dict[str, type[CostGNN]] = {"gcn": GCN, "sage": SAGE, "gin": GINE, "gine": GINE, "gat": GAT}


class Ensemble(nn.Module):
    """The mean predicted log time of several cost models (e.g. one recipe trained from several seeds).

    Averaging members that differ only in their initialization and batch order cuts the variance
    of the prediction, which is what costs most on unseen tasks (a single confident mistake at the
    top of a ranking). Config form: ``{"name": "ensemble", "members": [member config, ...]}``.
    """

    conv_name = "ensemble"

    def __init__(self, *, members: list[dict[str, Any]]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if any(dict(m).get("name") == "ensemble" for m in members):
            raise ValueError("ensemble members cannot be ensembles themselves")
        self.members = nn.ModuleList(build_model(m) for m in members)

    def forward(self, data: Any) -> Tensor:
        """Mean over members of the predicted log seconds [B]."""
        return self.member_outputs(data).mean(0)

    def member_outputs(self, data: Any) -> Tensor:
        """Each member's predicted log seconds [M, B]: their spread is the ensemble's doubt."""
        return torch.stack([m(data) for m in self.members])

    def outputs_and_embedding(self, data: Any) -> tuple[Tensor, Tensor]:
        """Each member's predicted log seconds [M, B] and the members' embeddings side by side [B, M * D]."""
        ys, gs = zip(*(m.forward_embedding(data) for m in self.members))
        return torch.stack(ys), torch.cat(gs, dim=-1)


def build_model(config: dict[str, Any]) -> nn.Module:
    """A model from a plain config dict: ``{"name": "gcn"|"sage"|"gin"|"gat", **CostGNN kwargs}``,
    or ``{"name": "ensemble", "members": [config, ...]}``.

    This is the form checkpoints store, so a checkpoint rebuilds its model without Hydra.
    """
    cfg = dict(config)
    name = cfg.pop("name", None)
    cfg.pop("_target_", None)
    if name == "ensemble":
        return Ensemble(members=[dict(m) for m in cfg.get("members") or []])
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)} or 'ensemble'")
    return MODELS[name](**cfg)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["CostGNN", "GCN", "SAGE", "GINE", "GAT", "Ensemble", "MODELS", "READOUTS", "Readout", "build_model",
           "count_parameters"]
