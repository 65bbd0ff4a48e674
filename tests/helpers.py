"""Test helpers shared by the suite: small random graphs and batches, hypothesis strategies for adversarial graphs,
two small models, the location of the shared data sets, the range a quantizer covers and the resolution of a
program's output."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hypothesis import strategies as st
from torch import nn
from torch_geometric.nn import GINConv, GraphNorm, global_add_pool

import mixq_compile as mq
from mixq_compile.ir import instructions as K

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    root = os.environ.get("MIXQ_DATA")
    path = Path(root) if root else REPO.parent / "shared" / "datasets"
    return path if path.is_dir() else None


def random_graph(num_nodes: int, num_edges: int, features: int, seed: int = 0, self_loops: bool = False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, features, generator=gen)
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    if not self_loops:
        dst = torch.where(dst == src, (dst + 1) % num_nodes, dst)
    return x, torch.stack([src, dst])


def random_batch(graphs: int, nodes_per_graph: int, features: int, seed: int = 0):
    """A batch of ``graphs`` random graphs (ring plus chords) with a sorted batch vector."""
    gen = torch.Generator().manual_seed(seed)
    xs, edges, batch = [], [], []
    for g in range(graphs):
        n = nodes_per_graph + g % 3
        offset = sum(t.shape[0] for t in xs)
        ring = torch.arange(n)
        chords = torch.randint(0, n, (n,), generator=gen)
        src = torch.cat([ring, (ring + 1) % n, ring])
        dst = torch.cat([(ring + 1) % n, ring, chords])
        keep = src != dst
        edges.append(torch.stack([src[keep], dst[keep]]) + offset)
        xs.append(torch.randn(n, features, generator=gen))
        batch.append(torch.full((n,), g))
    return torch.cat(xs), torch.cat(edges, 1), torch.cat(batch)


class MLP(nn.Module):
    """The usual GNN baseline: it takes ``edge_index`` and ignores it (nothing for the structure program to do)."""

    def __init__(self, features: int, hidden: int, classes: int = 7) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(features, hidden), nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.relu(self.lin1(x)))


class GraphNormGIN(nn.Module):
    """GIN layer, GraphNorm (per-graph statistics gathered back to each graph's nodes), sum readout, head."""

    def __init__(self, features: int, hidden: int = 16, classes: int = 3):
        super().__init__()
        self.conv = GINConv(nn.Sequential(nn.Linear(features, hidden), nn.ReLU()))
        self.norm, self.head = GraphNorm(hidden), nn.Linear(hidden, classes)

    def forward(self, x, edge_index, batch):
        return self.head(global_add_pool(self.norm(self.conv(x, edge_index), batch), batch))


@st.composite
def adversarial_graphs(draw):
    """Graphs with isolated nodes, self loops, duplicate edges, no edges at all, and high-degree hubs."""
    n = draw(st.integers(2, 40))
    kind = draw(st.sampled_from(["random", "empty", "hub", "duplicates"]))
    if kind == "empty":
        pairs = []
    elif kind == "hub":
        pairs = [(i, 0) for i in range(n)] + [(0, i) for i in range(n)]
    else:
        pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=4 * n))
        if kind == "duplicates" and pairs:
            pairs = pairs * 3
    edge_index = torch.tensor(pairs, dtype=torch.long).t().reshape(2, -1)
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)) * draw(st.sampled_from([0.01, 1.0, 30.0]))
    return x, edge_index


def covered_range(qmodel: mq.QuantizedModel, site: str, bits: int = 8) -> tuple[float, float]:
    """The real interval the ``bits``-bit candidate of ``site`` represents, from its scale and zero point."""
    q = qmodel.quantizer(site).candidate(bits)
    zero_point = q.zero_point.detach().round()
    return float((q.spec.qmin - zero_point) * q.scale.detach()), float((q.spec.qmax - zero_point) * q.scale.detach())


def unusual_graphs(x: torch.Tensor, edge_index: torch.Tensor, *rest: torch.Tensor) -> dict[str, tuple]:
    """Valid inputs that random examples rarely contain, with the shapes of ``(x, edge_index, *rest)``: half the
    edges into one hub, duplicated edges, self loops, the last three nodes cut off from every edge, and features
    50x outside the calibrated range. An artifact must give the integer program's answers on all of them."""
    n, e = x.shape[0], edge_index.shape[1]
    hub = edge_index.clone()
    hub[1, : e // 2] = n - 1
    duplicated = torch.cat([edge_index[:, : e // 2], edge_index[:, : e - e // 2]], 1)
    loops = edge_index.clone()
    loops[1, ::3] = loops[0, ::3]
    isolated = torch.where(edge_index >= n - 3, edge_index - 3, edge_index)
    graphs = {"hub": hub, "duplicated": duplicated, "self_loops": loops, "isolated": isolated}
    return {label: (x, ei, *rest) for label, ei in graphs.items()} | {"large_x": (x * 50, edge_index, *rest)}


def output_step(program) -> float:
    """One step of the grids or int32 accumulators an :class:`~mixq_compile.ir.program.IntegerProgram`'s output is
    dequantized from: the scales of the last dequantizes before the output (several when float ops such as SAGE's
    final add combine dequantized values). Artifacts must match the program within it."""
    output = next(n for n in program.features.graph.nodes if n.op == "output")
    pending, total = list(output.all_input_nodes), 0.0
    while pending:
        node = pending.pop()
        if node.target in (K.dequantize, K.dequantize_acc):
            total += float(getattr(program.features, node.args[1].target).max())
        else:
            pending += [n for n in node.all_input_nodes if n.op == "call_function"]
    assert total > 0
    return total


#: edge weights: 8-bit codes; the int16 extremes (the kernels then add two terms per multiply, and -32768 * -32768
#: * 2 wraps); and int32 weights, which take the one-term path (and wrap around in int32)
WEIGHT_RANGES = [(-255, 256), (-32768, -32766), (32766, 32768), (-(2**31), 2**31)]
