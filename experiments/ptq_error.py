"""Post-training quantization error without QAT, per model and per site (issue 16).

Models built the usual way with random weights (two layers of each of the 25 ``torch_geometric.nn`` convs of
``tests/test_pyg_convs.py``, and PyG's ``models`` GCN / GraphSAGE / GIN / GAT, each also with ``jk="cat"`` and
``jk="max"``) on random graphs of 60 nodes, 240 edges and 16 features. Each is quantized on graph A, optionally
calibrated on ``--calibration-graphs`` further graphs with ``mq.calibrate``, frozen at 8 and 4 bits at every site,
and evaluated on a held-out graph B of the same distribution: relative L2 error ``||y_q - y|| / ||y||``.
``--held-out N`` evaluates on N held-out graphs (B and N - 1 more) and reports the mean and the worst: one graph
B says little about the graphs a deployed model meets (a node of higher degree than any calibration graph had).
``--sites MODEL`` lists, for one model, the error with only that site quantized (every other quantizer passes its
input through), on A and on B: which sites, and which of them only on unseen graphs (a range that does not cover
B), cost the error.

    python -m experiments.ptq_error [--calibration-graphs 8] [--held-out 8] [--sites GCNConv] [MODEL ...]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torch_geometric.nn as pyg
from torch import Tensor, nn
from torch_geometric.nn import models as pyg_models

import mixq_compile as mq

FEATURES, NODES, EDGES = 16, 60, 240
GRAPH_A, GRAPH_B, FIRST_CALIBRATION_GRAPH, FIRST_EXTRA_HELD_OUT = 1, 2, 100, 300  # seeds

CONVS: dict[str, Callable[[], nn.Module]] = {
    "GCNConv": lambda: pyg.GCNConv(FEATURES, FEATURES),
    "GATConv": lambda: pyg.GATConv(FEATURES, FEATURES, heads=2, concat=False),
    "GATv2Conv": lambda: pyg.GATv2Conv(FEATURES, FEATURES),
    "SGConv": lambda: pyg.SGConv(FEATURES, FEATURES, K=2),
    "SAGEConv": lambda: pyg.SAGEConv(FEATURES, FEATURES),
    "SAGEConv-max": lambda: pyg.SAGEConv(FEATURES, FEATURES, aggr="max"),
    "GINConv": lambda: pyg.GINConv(nn.Linear(FEATURES, FEATURES)),
    "TransformerConv": lambda: pyg.TransformerConv(FEATURES, FEATURES),
    "GraphConv": lambda: pyg.GraphConv(FEATURES, FEATURES),
    "ChebConv": lambda: pyg.ChebConv(FEATURES, FEATURES, K=2),
    "TAGConv": lambda: pyg.TAGConv(FEATURES, FEATURES),
    "APPNP": lambda: pyg.APPNP(2, 0.1),
    "EdgeConv": lambda: pyg.EdgeConv(nn.Linear(2 * FEATURES, FEATURES)),
    "GENConv": lambda: pyg.GENConv(FEATURES, FEATURES),
    "PNAConv": lambda: pyg.PNAConv(
        FEATURES, FEATURES, ["mean", "max", "std"], ["identity", "amplification"], torch.tensor([0, 2, 3, 4, 1.0])
    ),
    "ResGatedGraphConv": lambda: pyg.ResGatedGraphConv(FEATURES, FEATURES),
    "LEConv": lambda: pyg.LEConv(FEATURES, FEATURES),
    "GeneralConv": lambda: pyg.GeneralConv(FEATURES, FEATURES),
    "ARMAConv": lambda: pyg.ARMAConv(FEATURES, FEATURES),
    "ClusterGCNConv": lambda: pyg.ClusterGCNConv(FEATURES, FEATURES),
    "FeaStConv": lambda: pyg.FeaStConv(FEATURES, FEATURES),
    "MFConv": lambda: pyg.MFConv(FEATURES, FEATURES),
    "FiLMConv": lambda: pyg.FiLMConv(FEATURES, FEATURES),
    "SuperGATConv": lambda: pyg.SuperGATConv(FEATURES, FEATURES),
    "GatedGraphConv": lambda: pyg.GatedGraphConv(FEATURES, 2),
}
PYG_MODELS: dict[str, Callable[..., nn.Module]] = {
    "GCN": pyg_models.GCN,
    "GraphSAGE": pyg_models.GraphSAGE,
    "GIN": pyg_models.GIN,
    "GAT": pyg_models.GAT,
}


class TwoLayers(nn.Module):
    """``conv2(relu(conv1(x)))``: a node-level model of one conv kind."""

    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.conv1, self.conv2 = make(), make()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)


MODELS: dict[str, Callable[[], nn.Module]] = {name: (lambda make=make: TwoLayers(make)) for name, make in CONVS.items()}
for _name, _cls in PYG_MODELS.items():
    for _jk in (None, "cat", "max"):
        MODELS[f"{_name}" + (f"-jk={_jk}" if _jk else "")] = lambda cls=_cls, jk=_jk: cls(
            FEATURES, FEATURES, 2, FEATURES, jk=jk
        )


def random_graph(seed: int) -> tuple[Tensor, Tensor]:
    """Gaussian features and uniformly random directed edges (no self loops)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(NODES, FEATURES, generator=gen)
    src = torch.randint(0, NODES, (EDGES,), generator=gen)
    dst = torch.randint(0, NODES, (EDGES,), generator=gen)
    return x, torch.stack([src, torch.where(dst == src, (dst + 1) % NODES, dst)])


def relative_error(approx: Tensor, exact: Tensor) -> float:
    return float((approx - exact).norm() / exact.norm())


def quantized(model: nn.Module, calibration_graphs: int) -> mq.QuantizedModel:
    """``model`` quantized on graph A, then calibrated on ``calibration_graphs`` other graphs (0: A only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float ops (attention softmaxes) are expected
        qmodel = mq.quantize(model, random_graph(GRAPH_A))
    if calibration_graphs:
        graphs = [random_graph(FIRST_CALIBRATION_GRAPH + i) for i in range(calibration_graphs)]
        mq.calibrate(qmodel, graphs, progress=False)
    return qmodel


def held_out_graphs(count: int) -> list[tuple[Tensor, Tensor]]:
    """Graph B and ``count - 1`` further graphs none of the calibrations sees."""
    return [random_graph(GRAPH_B)] + [random_graph(FIRST_EXTRA_HELD_OUT + i) for i in range(count - 1)]


def ptq_errors(
    name: str, calibration_graphs: int, bits: tuple[int, ...] = (8, 4), held_out: int = 1
) -> dict[int, list[float]]:
    """Relative L2 errors on each of ``held_out`` held-out graphs (B first) of model ``name`` frozen at each of
    ``bits`` everywhere (seeded weights)."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    qmodel = quantized(model, calibration_graphs)
    graphs = held_out_graphs(held_out)
    with torch.no_grad():
        exact = [model(*g) for g in graphs]
        frozen = {b: mq.freeze(qmodel, b).eval() for b in bits}
        return {b: [relative_error(f(*g), y) for g, y in zip(graphs, exact)] for b, f in frozen.items()}


def site_errors(name: str, calibration_graphs: int, bits: int = 8) -> list[tuple[str, str, float, float]]:
    """(site, kind, error on A, error on B) with only that site quantized at ``bits``."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    frozen = mq.freeze(quantized(model, calibration_graphs), bits).eval()
    quantizers = dict(frozen.quantizers())
    graphs = random_graph(GRAPH_A), random_graph(GRAPH_B)
    rows = []
    with torch.no_grad():
        exact = [model(*g) for g in graphs]
        for site in frozen.plan.sites:
            hooks = [
                q.register_forward_hook(lambda _m, args, _out: args[0]) for s, q in quantizers.items() if s != site.name
            ]
            errors = [relative_error(frozen(*g), y) for g, y in zip(graphs, exact)]
            for hook in hooks:
                hook.remove()
            rows.append((site.name, site.kind, *errors))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=sorted(MODELS), help="models (default: all)")
    parser.add_argument("--calibration-graphs", type=int, default=8, help="graphs for mq.calibrate (0: graph A only)")
    parser.add_argument("--held-out", type=int, default=1, help="held-out graphs evaluated on (B first)")
    parser.add_argument("--sites", metavar="MODEL", help="per-site errors of one model instead of the table")
    args = parser.parse_args()
    if args.sites:
        print(f"{'site':<36}{'kind':<13}{'A':>8}{'B':>8}")
        for site, kind, on_a, on_b in site_errors(args.sites, args.calibration_graphs):
            print(f"{site:<36}{kind:<13}{on_a:>8.4f}{on_b:>8.4f}")
        return
    print(f"{'model':<18}{'8-bit':>8}{'worst':>8}{'4-bit':>8}{'worst':>8}   (relative L2, mean over held-out graphs)")
    summary = []
    for name in args.models:
        errors = ptq_errors(name, args.calibration_graphs, held_out=args.held_out)
        means = {b: sum(e) / len(e) for b, e in errors.items()}
        summary.append(means[8])
        print(f"{name:<18}{means[8]:>8.4f}{max(errors[8]):>8.4f}{means[4]:>8.4f}{max(errors[4]):>8.4f}", flush=True)
    under, mean = sum(m < 0.02 for m in summary), sum(summary) / len(summary)
    print(f"8-bit mean error under 2 %: {under} of {len(summary)} models; mean over models {mean:.4f}")


if __name__ == "__main__":
    main()
