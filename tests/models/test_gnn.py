"""CostGNN variants: shapes, readouts, edge features, the log-FLOPs and target inputs, and overfitting."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from perfmodel.models import MODELS, READOUTS, build_model, count_parameters

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend


def _graph(n: int, task: int, flops: float, *, f: int = 5, fe: int = 3) -> Data:
    ei = torch.tensor([[i for i in range(n - 1)], [i + 1 for i in range(n - 1)]], dtype=torch.long)
    return Data(x=torch.randn(n, f), edge_index=ei, edge_attr=torch.randn(n - 1, fe), y=torch.randn(1),
                task=torch.tensor([task]), flops=torch.tensor([flops]))


@pytest.fixture()
def batch() -> Batch:
    torch.manual_seed(0)
    return Batch.from_data_list([_graph(3, 0, 1e6), _graph(1, 0, 1e6), _graph(4, 1, 1e9)])


@pytest.mark.parametrize("name", ["gcn", "sage", "gin", "gat"])
@pytest.mark.parametrize("readout", READOUTS)
def test_forward_shape(name: str, readout: str, batch: Batch) -> None:
    model = build_model({"name": name, "in_dim": 5, "edge_dim": 3, "hidden": 8, "readout": readout})
    out = model(batch)
    assert out.shape == (3,) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_single_graph_without_batch_vector() -> None:
    model = build_model({"name": "gin", "in_dim": 5, "edge_dim": 3, "hidden": 8})
    assert model(_graph(3, 0, 1e6)).shape == (1,)


@pytest.mark.parametrize("name", ["gin", "gat", "gcn"])
def test_edge_features_change_prediction(name: str, batch: Batch) -> None:
    model = build_model({"name": name, "in_dim": 5, "edge_dim": 3, "hidden": 8}).eval()
    other = batch.clone()
    other.edge_attr = other.edge_attr + 3.0
    assert not torch.allclose(model(batch), model(other))


def test_sage_ignores_edge_features(batch: Batch) -> None:
    model = build_model({"name": "sage", "in_dim": 5, "edge_dim": 3, "hidden": 8}).eval()
    other = batch.clone()
    other.edge_attr = other.edge_attr + 3.0
    assert torch.allclose(model(batch), model(other))


def test_flops_enter_the_prediction(batch: Batch) -> None:
    model = build_model({"name": "gcn", "in_dim": 5, "edge_dim": 3, "hidden": 8}).eval()
    model.set_flops_stats(torch.log(torch.tensor([1e6, 1e9])))
    other = batch.clone()
    other.flops = other.flops * 100
    assert not torch.allclose(model(batch), model(other))


def test_argument_bytes_enter_the_prediction_only_with_use_bytes(batch: Batch) -> None:
    batch.io_bytes = torch.tensor([1e4, 1e5, 1e7])
    more = batch.clone()
    more.io_bytes = more.io_bytes * 100
    lf, lb = torch.log(batch.flops.double()), torch.log(batch.io_bytes.double())
    plain = build_model({"name": "gcn", "in_dim": 5, "edge_dim": 3, "hidden": 8}).eval()
    plain.set_flops_stats(lf, torch.zeros(3), lb)  # a model without use_bytes ignores log_bytes
    assert torch.allclose(plain(batch), plain(more))
    roof = build_model({"name": "gcn", "in_dim": 5, "edge_dim": 3, "hidden": 8, "use_bytes": True}).eval()
    roof.set_flops_stats(lf, torch.tensor([0.0, 1.0, 2.0]), lb)
    assert not torch.allclose(roof(batch), roof(more))
    with pytest.raises(ValueError, match="pass log_bytes"):
        roof.set_flops_stats(lf, torch.zeros(3))
    del batch.io_bytes
    with pytest.raises(ValueError, match="graphs have none"):
        roof(batch)


def test_a_copy_counts_its_bytes_as_its_work_only_with_copy_work(batch: Batch) -> None:
    from perfmodel.models.gnn import log_work

    batch.flops = torch.tensor([0.0, 1e6, 1e9])  # graph 0 computes nothing (a reshape)
    batch.io_bytes = torch.tensor([1e6, 1e5, 1e7])
    lw = log_work(batch.flops, batch.io_bytes, copy_work=True)
    assert torch.allclose(lw, torch.log(torch.tensor([1e6, 1e6, 1e9], dtype=torch.float64)))
    assert log_work(batch.flops)[0] == 0.0  # without it: log max(FLOPs, 1)
    copy = build_model({"name": "gcn", "in_dim": 5, "edge_dim": 3, "hidden": 8, "copy_work": True}).eval()
    copy.set_flops_stats(lw, torch.tensor([-12.0, -9.0, -6.0]))
    # the reshape's scale input now equals a 1e6-FLOP graph's (bytes stand for its FLOPs)
    assert torch.allclose(copy.log_flops(batch)[0], copy.log_flops(batch)[1])
    more = batch.clone()
    more.io_bytes = torch.tensor([1e8, 1e5, 1e7])  # only the copy's bytes grow: only its prediction moves
    a, b = copy(batch), copy(more)
    assert not torch.isclose(a[0], b[0]) and torch.allclose(a[1:], b[1:])
    plain = build_model({"name": "gcn", "in_dim": 5, "edge_dim": 3, "hidden": 8}).eval()
    plain.set_flops_stats(log_work(batch.flops), torch.tensor([-12.0, -9.0, -6.0]))
    assert torch.allclose(plain(batch), plain(more))
    del more.io_bytes
    with pytest.raises(ValueError, match="copy_work=True"):
        copy(more)


@pytest.mark.parametrize("name", ["gin", "gcn"])
def test_target_id_enters_the_prediction_only_with_target_input(name: str, batch: Batch) -> None:
    batch.target_id = torch.tensor([0, 0, 0])
    other = batch.clone()
    other.target_id = torch.tensor([1, 1, 1])
    plain = build_model({"name": name, "in_dim": 5, "edge_dim": 3, "hidden": 8}).eval()
    assert torch.equal(plain(batch), plain(other))  # no target input: target_id ignored ...
    del other.target_id
    assert torch.equal(plain(batch), plain(other))  # ... and not needed
    torch.manual_seed(0)
    both = build_model({"name": name, "in_dim": 5, "edge_dim": 3, "hidden": 8, "target_input": 2}).eval()
    other.target_id = torch.tensor([1, 0, 1])
    a, b = both(batch), both(other)
    assert not torch.allclose(a[[0, 2]], b[[0, 2]]) and torch.allclose(a[1], b[1])
    assert both.target_embed.num_embeddings == 2
    assert both.head[0].in_features == plain.head[0].in_features + both.target_dim  # joined to the head input only
    assert {k for k in both.state_dict() if k not in plain.state_dict()} == {"target_embed.weight"}
    other.target_id = torch.tensor([0, 2, 0])
    with pytest.raises(ValueError, match="outside the model's 2 targets"):
        both(other)
    del other.target_id
    with pytest.raises(ValueError, match="no target_id"):
        both(other)
    with pytest.raises(ValueError, match="number of targets"):
        build_model({"name": name, "in_dim": 5, "target_input": True})  # training turns true into a count


def test_the_skip_starts_at_the_least_squares_roofline_plane() -> None:
    """log secs = 0.5 log FLOPs + 0.8 log bytes - 30, exactly: the skip term alone reproduces it."""
    g = torch.Generator().manual_seed(0)
    lf = 10 + 8 * torch.rand(40, generator=g, dtype=torch.float64)
    lb = 8 + 6 * torch.rand(40, generator=g, dtype=torch.float64)
    y = 0.5 * lf + 0.8 * lb - 30
    m = build_model({"name": "gcn", "in_dim": 5, "hidden": 8, "use_bytes": True})
    m.set_flops_stats(lf, y, lb)
    data = Data(flops=torch.exp(lf).float(), io_bytes=torch.exp(lb).float())
    skip = m.skip(m.scale_inputs(data).float()).squeeze(-1).double()
    assert torch.allclose(skip, y, atol=1e-3)
    assert float(m.head[-1].bias) == 0.0


@pytest.mark.parametrize("edge_dim", [3, 0])
def test_gine_inference_with_composed_edge_maps_equals_pyg_gineconv(edge_dim: int, batch: Batch) -> None:
    """Eval mode composes each layer's edge projection with the edge embedding: the same function as
    PyG's GINEConv (what training runs), up to float rounding; training mode runs GINEConv itself."""
    torch.manual_seed(1)
    model = build_model({"name": "gin", "in_dim": 5, "edge_dim": edge_dim, "hidden": 8, "num_layers": 3})
    for conv in model.convs:  # non-trivial eps and biases
        conv.eps.data.fill_(0.3)
    model.eval()
    fused = model(batch)
    model.fuse_edges = False
    plain = model(batch)
    assert torch.allclose(fused, plain, atol=1e-5, rtol=1e-5)
    model.fuse_edges = True
    model.train()  # no dropout here: training mode is the same function, through GINEConv
    assert not model._fused() and torch.allclose(model(batch), plain, atol=1e-6)
    model(batch).sum().backward()
    assert all(c.lin.weight.grad is not None for c in model.convs) if edge_dim else True


def test_unknown_model_and_readout() -> None:
    with pytest.raises(ValueError, match="unknown model 'mlp'"):
        build_model({"name": "mlp", "in_dim": 5})
    with pytest.raises(ValueError, match="readout must be one of"):
        build_model({"name": "gcn", "in_dim": 5, "readout": "median"})


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"gine"}))
def test_overfits_synthetic_graphs(name: str) -> None:
    from perfmodel.training.synthetic import SyntheticDataset

    torch.manual_seed(0)
    ds = SyntheticDataset(n_tasks=4, per_task=8, seed=1)
    b = Batch.from_data_list([ds[i] for i in range(len(ds))])
    model = build_model({"name": name, "in_dim": 16, "edge_dim": 4, "hidden": 32})
    model.set_flops_stats(torch.log(b.flops.double()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(b), b.y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first / 10, (first, float(loss.detach()))


def test_count_parameters_counts_the_trainable_ones() -> None:
    model = build_model({"name": "gcn", "in_dim": 5, "hidden": 8})
    n = count_parameters(model)
    first = next(model.parameters())
    first.requires_grad_(False)  # a frozen weight is not counted
    assert count_parameters(model) == n - first.numel()


def test_models_training_and_predictor_import_without_tvm() -> None:
    import subprocess
    import sys

    code = "import sys, perfmodel.models, perfmodel.training, perfmodel.predictor; print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dropped_features_do_not_reach_the_prediction(batch: Batch) -> None:
    from perfmodel.featurize.schema import NODE_FEATURES, NODE_INDEX

    f = len(NODE_FEATURES)
    torch.manual_seed(0)
    graphs = Batch.from_data_list([_graph(3, 0, 1e6, f=f), _graph(2, 1, 1e9, f=f)])
    cfg = {"name": "gin", "in_dim": f, "edge_dim": 3, "hidden": 8}
    dropped = build_model({**cfg, "drop_features": ["vec_bytes", "vec_waste32"]}).eval()
    full = build_model(cfg).eval()
    full.load_state_dict(dropped.state_dict())  # same weights: the mask is no parameter
    for name, changes in (("vec_waste32", False), ("l0_extent", True)):
        other = graphs.clone()
        other.x[:, NODE_INDEX[name]] += 5.0
        assert torch.allclose(dropped(graphs), dropped(other)) != changes, name
        assert not torch.allclose(full(graphs), full(other)), name
    rebuilt = build_model({**cfg, "drop_features": list(dropped.drop_features)})
    assert torch.equal(rebuilt.keep, dropped.keep) and int(rebuilt.keep.sum()) == f - 2
    with pytest.raises(ValueError, match="'vec_lanes' is not a node feature"):
        build_model({**cfg, "drop_features": ["vec_lanes"]})


def _node_embeddings(model: torch.nn.Module, data: Data) -> torch.Tensor:
    """The node embeddings [N, H] the readout pools (after the last convolution)."""
    seen: list[torch.Tensor] = []
    hook = model.readout.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model(data)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("name", ["gin", "gcn"])
def test_the_virtual_node_reaches_stages_beyond_the_layers_hops(name: str) -> None:
    """A 6-stage chain, 2 layers: without the virtual node the first stage's embedding cannot see the last
    stage (5 hops away); with it, it does."""
    torch.manual_seed(0)
    g = _graph(6, 0, 1e6)
    far = g.clone()
    far.x = far.x.clone()
    far.x[5] += 5.0
    for vn, reaches in ((False, False), (True, True)):
        torch.manual_seed(0)
        m = build_model({"name": name, "in_dim": 5, "edge_dim": 3, "hidden": 8, "num_layers": 2,
                         "virtual_node": vn}).eval()
        a, b = _node_embeddings(m, g)[0], _node_embeddings(m, far)[0]
        assert torch.allclose(a, b) is not reaches, f"virtual_node={vn}"
    assert len(m.vn_mlps) == 1  # between the two layers only


def test_the_virtual_node_keeps_the_graphs_of_a_batch_apart(batch: Batch) -> None:
    torch.manual_seed(0)
    m = build_model({"name": "gin", "in_dim": 5, "edge_dim": 3, "hidden": 8, "virtual_node": True}).eval()
    together = m(batch)
    alone = torch.cat([m(Batch.from_data_list([g])) for g in batch.to_data_list()])
    assert torch.allclose(together, alone, atol=1e-5)
    together.sum().backward()
    assert all(p.grad is not None for p in m.vn_mlps.parameters())
