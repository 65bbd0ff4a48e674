"""Sampled subgraphs: the torch neighbor sampler behind PyG's NeighborLoader, mini-batch search / QAT with
checkpoints, and data-parallel training over two gloo processes."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import SAGEConv

import mixq_compile as mq
from mixq_compile.ir.meta import PLAN_KEY
from mixq_compile.minibatch import evaluate_sampled, shard, train_sampled
from mixq_compile.sampling import neighbor_loader, sample_neighbors
from mixq_compile.synthetic import planted_communities


class Sage(nn.Module):
    def __init__(self, in_channels: int = 16, out_channels: int = 3) -> None:
        super().__init__()
        self.conv1, self.conv2 = SAGEConv(in_channels, 32), SAGEConv(32, out_channels)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


def planted(num_nodes: int = 600, seed: int = 0) -> Data:
    """Three planted communities, 16 noisy features: learnable from features and structure."""
    return planted_communities(num_nodes, classes=3, features=16, noise=3.0, seed=seed)


def test_sampled_edges_exist_respect_the_fanout_and_put_seeds_first():
    data = planted()
    edges = set(map(tuple, data.edge_index.t().tolist()))
    torch.manual_seed(1)
    loader = neighbor_loader(data, [4, 2], batch_size=50, shuffle=True)
    seen = 0
    for batch in loader:
        ids = batch.n_id
        pairs = torch.stack([ids[batch.edge_index[0]], ids[batch.edge_index[1]]]).t().tolist()
        assert all(tuple(p) in edges for p in pairs)
        per_target = torch.bincount(batch.edge_index[1], minlength=batch.num_nodes)
        assert per_target[: batch.batch_size].max() <= 4
        assert torch.equal(batch.x, data.x[ids]) and torch.equal(batch.y, data.y[ids])
        seen += batch.batch_size
    assert seen == data.num_nodes


def test_a_full_fanout_takes_every_in_edge():
    from torch_geometric.utils import sort_edge_index

    data = planted(200)
    edge_index = sort_edge_index(data.edge_index, sort_by_row=False)
    colptr = torch.ops.aten._convert_indices_from_coo_to_csr(edge_index[1], 200)
    seed = torch.tensor([3, 17, 42])
    node, src, dst, _, hop_nodes, hop_edges = sample_neighbors(colptr, edge_index[0], seed, [-1])
    want = torch.isin(data.edge_index[1], seed).sum()
    assert hop_edges == [int(want)] and torch.equal(node[:3], seed) and sum(hop_nodes) == node.numel()
    got = sorted(zip(node[src].tolist(), node[dst].tolist()))
    assert got == sorted(map(tuple, data.edge_index[:, torch.isin(data.edge_index[1], seed)].t().tolist()))
    _, _, dst_r, _, _, hop_edges_r = sample_neighbors(colptr, edge_index[0], seed, [5], replace=True)
    assert hop_edges_r == [15] and torch.bincount(dst_r).tolist() == [5, 5, 5]


def _loaders(data: Data, batch_size: int = 64):
    train, val = torch.arange(0, 450), torch.arange(450, data.num_nodes)
    gen = torch.Generator().manual_seed(0)
    train_loader = neighbor_loader(data, [5, 5], input_nodes=shard(train), batch_size=batch_size, shuffle=True,
                                   generator=gen)  # fmt: skip
    val_loader = neighbor_loader(data, [5, 5], input_nodes=val, batch_size=batch_size)
    return train_loader, val_loader


def _quantized(train_loader, model: nn.Module | None = None) -> mq.QuantizedModel:
    """The model quantized on one sampled batch (captured with dynamic node and edge counts)."""
    capture = next(iter(train_loader))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model or Sage(), (capture.x, capture.edge_index))


def test_search_and_qat_over_sampled_batches_of_other_sizes(tmp_path):
    torch.manual_seed(0)
    data = planted()
    train_loader, val_loader = _loaders(data)
    fp32 = Sage()
    train_sampled(fp32, train_loader, val_loader, epochs=6, progress=False)
    fp32_acc = evaluate_sampled(fp32, val_loader)
    assert fp32_acc > 0.6, "the planted task is learnable"
    qmodel = _quantized(train_loader, fp32.eval())
    start = float(mq.penalty(qmodel))
    train_sampled(qmodel, train_loader, val_loader, epochs=4, lam=1.0, lr=0.02, progress=False)
    assert float(mq.penalty(qmodel)) < start, "the search lowers the expected cost on sampled batches"
    frozen = mq.freeze(qmodel)
    result = train_sampled(frozen, train_loader, val_loader, epochs=3, lr=1e-3, progress=False)
    frozen.load_state_dict(result.best_state)
    assert evaluate_sampled(frozen, val_loader) > fp32_acc - 0.15


class _Counting:
    def __init__(self, loader) -> None:
        self.loader, self.batches = loader, 0

    def __iter__(self):
        for batch in self.loader:
            self.batches += 1
            yield batch


def test_a_killed_run_resumes_after_its_last_checkpointed_epoch(tmp_path):
    data = planted()
    train_loader, _ = _loaders(data, batch_size=150)
    path = tmp_path / "search.pt"
    qmodel = _quantized(train_loader)
    first = _Counting(train_loader)
    train_sampled(qmodel, first, epochs=2, lam=0.5, checkpoint=path, progress=False)
    assert first.batches == 2 * 3 and path.is_file()
    again = _quantized(train_loader)  # a new process: fresh model, same checkpoint
    second = _Counting(train_loader)
    result = train_sampled(again, second, epochs=3, lam=0.5, checkpoint=path, progress=False)
    assert second.batches == 3, "only the third epoch runs"
    assert result.best_epoch == 2


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different sampling per rank; parameters must still agree
    data = planted()
    train_loader, val_loader = _loaders(data)
    capture_loader = neighbor_loader(data, [5, 5], input_nodes=torch.arange(64), batch_size=64)
    qmodel = _quantized(capture_loader)  # every rank captures the same batch
    train_sampled(qmodel, train_loader, val_loader, epochs=2, lam=1.0, lr=0.05, progress=False)
    alphas = torch.cat([a.detach().flatten() for a in qmodel.arch_parameters()])
    weights = torch.cat([p.detach().flatten() for p in qmodel.parameters()])
    torch.save({"alphas": alphas, "weights": weights, "bits": mq.freeze(qmodel).chosen_bits()}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_search_over_two_gloo_processes_keeps_ranks_identical(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank")
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    assert torch.equal(ranks[0]["alphas"], ranks[1]["alphas"])
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    assert ranks[0]["bits"] == ranks[1]["bits"]


@pytest.mark.parametrize("mode", [{"disjoint": True}])
def test_modes_the_torch_sampler_lacks_name_pyg_lib(mode):
    from mixq_compile.sampling import compiled_sampler

    if compiled_sampler() is not None:
        pytest.skip(f"{compiled_sampler()} is installed: PyG samples with it")
    loader = neighbor_loader(planted(100), [3], batch_size=10, **mode)
    with pytest.raises(ImportError, match="pyg-lib or torch-sparse"):
        next(iter(loader))


@pytest.mark.parametrize("conv", ["gcn", "sage", "gat"])
def test_chunked_whole_graph_inference_gives_the_full_graph_integers(conv, tmp_path):
    from torch_geometric.nn import GATConv, GCNConv

    from mixq_compile.chunked_inference import predict_in_chunks

    from helpers import random_graph

    layer = {"gcn": GCNConv, "sage": SAGEConv, "gat": lambda i, o: GATConv(i, o, heads=2, concat=False)}[conv]

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = layer(16, 32), layer(32, 5)

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)

    torch.manual_seed(0)
    x, edge_index = random_graph(1500, 9000, 16, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(Two().eval(), random_graph(200, 900, 16, seed=4))
    frozen = mq.freeze(qmodel, bits=4).eval()
    artifact = mq.load_artifact(mq.export(frozen, (x, edge_index), tmp_path / conv, backend="torch"))
    whole = artifact(x, edge_index)
    chunked = predict_in_chunks(artifact, x, edge_index, hops=2, chunk_size=400, progress=False)
    if conv == "gat":  # the attention softmax runs in float: equal to float rounding
        assert torch.allclose(chunked, whole, atol=1e-4)
    else:
        assert torch.equal(chunked, whole)
    if conv == "gcn":  # GCN's normalisation reads the senders' degrees: a halo of one hop is too small
        too_small = predict_in_chunks(artifact, x, edge_index, hops=1, chunk_size=400, progress=False)
        assert not torch.allclose(too_small, whole, atol=1e-4)


@pytest.mark.slow
def test_the_documented_torchrun_command_runs_two_ranks_that_agree(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "experiments.ddp_search", "--smoke", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=checkout)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_agree"] and set(summary["bits"].values()) <= {2, 4, 8}
    assert (tmp_path / "model" / "mixq.json").is_file()


def test_ranges_calibrated_over_several_sampled_batches_cover_all_of_them():
    from helpers import covered_range

    qmodel = _quantized(_loaders(planted())[0])  # captured on a batch of the usual features
    data = planted()
    data.x[data.num_nodes // 2 :] *= 4.0  # half of the nodes have 4x larger features
    before = covered_range(qmodel, "conv1.message")
    batches = list(neighbor_loader(data, [5, 5], input_nodes=torch.arange(0, data.num_nodes, 7), batch_size=32))
    mq.calibrate(qmodel, batches, progress=False)
    low, high = covered_range(qmodel, "conv1.message")
    slack = 0.1 * (high - low)  # MSE clipping at 8 bits trims the extremes by a few percent
    for batch in batches:
        assert low - slack <= float(batch.x.min()) and float(batch.x.max()) <= high + slack
    assert high > before[1], "the range grew to the batches the capture did not see"


def test_a_mean_aggregation_is_quantized_after_its_division_so_hubs_stay_on_the_grid():
    """SAGE's mean is ``sum / count``: the aggregate site is the mean (its range does not grow with the degree),
    not the sum. Calibrated on low-degree graphs, a hub of 300 in-edges is then represented as well as the rest
    (its sum would be ~100x the calibrated range)."""
    torch.manual_seed(0)
    conv = SAGEConv(8, 8).eval()
    gen = torch.Generator().manual_seed(0)

    def graph(nodes: int, hub_degree: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(nodes, 8, generator=gen).abs() + 0.5  # positive features: sums grow with the degree
        src = torch.randint(0, nodes, (3 * nodes,), generator=gen)
        dst = torch.randint(0, nodes, (3 * nodes,), generator=gen)
        hub = torch.stack([torch.arange(hub_degree) % nodes, torch.zeros(hub_degree, dtype=torch.long)])
        return x, torch.cat([torch.stack([src, dst]), hub], dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(conv, graph(60, 0))
    site = next(site for site in qmodel.graph_module.meta[PLAN_KEY].sites if site.kind == "aggregate")
    node = next(n for n in qmodel.graph_module.graph.nodes if n.name == site.node)
    assert node.target == torch.ops.aten.div.Tensor, f"the aggregate site is on {node.target}, not the mean"
    mq.calibrate(qmodel, [graph(60, 0) for _ in range(3)], progress=False)
    x, edge_index = graph(400, 300)
    with torch.no_grad():
        exact, got = conv(x, edge_index), mq.freeze(qmodel, 8).eval()(x, edge_index)
    assert float((got[0] - exact[0]).norm() / exact[0].norm()) < 0.05, "the hub's row left the grid"
    assert float((got - exact).norm() / exact.norm()) < 0.05
