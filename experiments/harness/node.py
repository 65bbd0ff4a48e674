"""The paper's node-classification protocol on Planetoid (MIXQ_METHOD.md §5.1), through the public pipeline.

One run: (A) search: ``quantize`` a fresh GCN with all candidates and train with CE + λ·penalty; take the
last-epoch argmax bits (as the reference does). (B) FP32: train a new plain GCN (this is also the FP32 baseline).
(C) QAT: ``quantize`` the trained FP32 model, ``freeze`` it at the searched bits and fine-tune with Adam lr 1e-3,
no weight decay. The reported accuracy is the test accuracy at the best-validation epoch of (C).
"""

from __future__ import annotations

import time
from typing import Any

import mixq_compile as mq
from experiments.harness.common import bits_summary, costs, load, quantize, seed_everything
from mixq_compile.graph_copy import quiet_deepcopy
from mixq_compile.models import PlanetoidGCN
from mixq_compile.training import NodeData, train_node


def node_data(name: str) -> NodeData:
    return NodeData.from_pyg(load(name).dataset[0])


def _options(config: dict[str, Any]) -> tuple[bool, str]:
    return config.get("degree_quant", False), config.get("input_granularity", "tensor")


def search(
    data: NodeData,
    config: dict[str, Any],
    latency: mq.LatencyTable | None = None,
    start: mq.QuantizedModel | None = None,
) -> dict[str, int]:
    """Phase A: the MixQ search; returns the argmax bit-width of every site after the last epoch (lowered to fit
    the budget with ``fit_budget``). With ``latency`` (a measured table of this model) the penalty is the expected
    measured latency instead of the expected BitOPs. ``start``: a mixed model to search a copy of (several searches
    from one calibration, which takes ~35 s on a 50k-node graph); default: a fresh GCN, quantized here."""
    if start is None:
        model = PlanetoidGCN(data.x.shape[1], int(data.y.max()) + 1, hidden=config["hidden"])
        qmodel = quantize(model, data.inputs, config["bit_widths"], *_options(config))
    else:
        qmodel = quiet_deepcopy(start)
    convention = config.get("budget_convention", "wa")
    train_node(
        qmodel,
        data,
        epochs=config["search_epochs"],
        lam=config.get("penalty_weight", config["lambda"]),
        penalty_scaling=config["scaling"],
        budget=config.get("budget"),
        budget_convention=convention,
        latency=latency,
        desc="search",
        progress=False,
        track_best=False,
    )
    if config.get("fit_budget"):  # the budget as a hard limit on the argmax bits, not only on the expected cost
        return mq.fit_budget(qmodel, config["budget"], convention=convention)
    return qmodel.chosen_bits()


def train_fp32(data: NodeData, config: dict[str, Any]):
    """Phase B: a new FP32 GCN trained from scratch; returns the model at its best-val state and the result."""
    model = PlanetoidGCN(data.x.shape[1], int(data.y.max()) + 1, hidden=config["hidden"])
    result = train_node(model, data, epochs=config["fp_epochs"], desc="FP32", progress=False)
    model.load_state_dict(result.best_state)
    return model, result


def qat(fp_model, data: NodeData, bits: dict[str, int], config: dict[str, Any], quantized=None):
    """Phase C: quantize the trained FP32 model, fix its bits, fine-tune; returns the frozen model and result.
    ``quantized``: ``fp_model`` already quantized (freezing copies it, so one calibration serves several runs)."""
    qmodel = (
        quantize(fp_model, data.inputs, config["bit_widths"], *_options(config)) if quantized is None else quantized
    )
    frozen = mq.freeze(qmodel, bits=bits)
    result = train_node(
        frozen, data, epochs=config["qat_epochs"], lr=config["qat_lr"], weight_decay=0.0, desc="QAT", progress=False
    )
    frozen.load_state_dict(result.best_state)
    return frozen, result


def planetoid_run(config: dict[str, Any]) -> dict[str, Any]:
    """One full run of the Table-1 protocol; every number in the record is measured here."""
    seed_everything(config["seed"])
    data = node_data(config["dataset"])
    start = time.perf_counter()
    bits = search(data, config)
    t_search = time.perf_counter()
    fp_model, fp = train_fp32(data, config)
    t_fp = time.perf_counter()
    frozen, q = qat(fp_model, data, bits, config)
    t_qat = time.perf_counter()
    return {
        "acc": q.test_at_best_val * 100,
        "val_acc": q.best_val * 100,
        "fp32_acc": fp.test_at_best_val * 100,
        **costs(frozen, data.inputs),
        **costs(fp_model, data.inputs, prefix="fp32_"),
        "bits": bits_summary(bits),
        "sites": list(bits),
        "search_s": t_search - start,
        "fp_s": t_fp - t_search,
        "qat_s": t_qat - t_fp,
    }
