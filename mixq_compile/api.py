"""Public entry points: quantize, penalty, freeze, bitops, sites."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from torch import Tensor, fx, nn

from .calibration import calibrate
from .capture import capture
from .config import QuantConfig
from .cost.bitops import BitOpsReport, as_report, check_convention, fp32_bitops, model_bytes, quantized_bitops
from .cost.budget import fit_budget as fit_assignment
from .cost.latency import LatencyTable, latency_penalty
from .cost.ops import record_shapes
from .cost.penalty import compute_penalty
from .graph_copy import quiet_deepcopy
from .passes.find_sites import find_sites
from .passes.pipeline import run_pipeline, search_pipeline
from .quantized_model import QuantizedModel
from .site_report import SiteTable, site_table


def quantize(
    model: nn.Module,
    example_inputs: Sequence[Tensor],
    bit_widths: Sequence[int] = (2, 4, 8),
    *,
    config: QuantConfig | None = None,
    dynamic_shapes: object | None = None,
    strict: bool | None = None,
) -> QuantizedModel:
    """Capture an FP32 PyG model and put a MixQ mixed quantizer at every quantizable point.

    Args:
        model: any FP32 ``nn.Module`` whose forward takes tensors (e.g. ``(x, edge_index[, batch])``).
        example_inputs: a representative input tuple; used to capture, to size per-channel quantizers and to
            calibrate every quantizer's initial range (:func:`~mixq_compile.calibrate` sets the ranges from many
            batches instead).
        bit_widths: candidate bit-widths of every site (ignored if ``config`` is given).
        config: full :class:`QuantConfig` (kinds, specs, per-site candidates, skips).
        dynamic_shapes / strict: passed to ``torch.export`` (default: every dim automatic, non-strict then strict).

    Returns a :class:`QuantizedModel` in the model's original train/eval mode, with its own copy of the weights
    (training it leaves ``model`` unchanged). Feature ops with no rule stay in
    float; they are listed in ``sites(qmodel)`` and a warning names how many.
    """
    if isinstance(model, QuantizedModel):
        raise TypeError(
            "the model is already quantized (a QuantizedModel); quantize the FP32 model it came from, or change "
            "its bit-widths with mixq_compile.freeze(qmodel, bits=...)"
        )
    config = config or QuantConfig(bit_widths=tuple(bit_widths))
    # A private copy: the captured graph would otherwise share the user's parameters, and training the quantized
    # model would silently change the FP32 model.
    gm, signature = capture(quiet_deepcopy(model), example_inputs, dynamic_shapes=dynamic_shapes, strict=strict)
    gm = run_pipeline(gm, search_pipeline(config))
    qmodel = QuantizedModel(gm, signature, config)
    calibrate(qmodel, [tuple(example_inputs)], progress=False)
    qmodel.record_example_shapes(tuple(example_inputs))
    qmodel.train(model.training)
    float_ops = qmodel.plan.float_ops
    if float_ops:
        warnings.warn(
            f"{len(float_ops)} feature op(s) have no quantization rule and stay in float "
            f"(e.g. {', '.join(float_ops[:3])}); see mixq_compile.sites(qmodel).float_ops",
            stacklevel=2,
        )
    return qmodel


def penalty(
    qmodel: QuantizedModel,
    *,
    scaling: str = "relative",
    budget: float | None = None,
    budget_convention: str = "wa",
    cost: str = "bitops",
    latency: LatencyTable | None = None,
    budget_ms: float | None = None,
) -> Tensor:
    """Differentiable expected cost for the search loss ``task_loss + λ * penalty(qmodel)``.

    ``cost="bitops"`` (default): see :mod:`mixq_compile.cost.penalty` for the ``"relative"`` (in (0, 1]),
    ``"paper"`` and ``budget`` forms. ``cost="latency"``: the expected *measured* latency of the deployed model
    from ``latency=mq.latency_table(qmodel, example_inputs)``, over the all-highest latency (so λ means what it
    means for the relative BitOPs penalty), or with ``budget_ms`` the hinge ``relu(E[latency] / budget_ms - 1)``
    (see :mod:`mixq_compile.cost.latency`).
    """
    _require_quantized(qmodel, "penalty")
    if cost == "latency":
        if latency is None:
            raise ValueError(
                "cost='latency' needs a measured table: latency=mixq_compile.latency_table(qmodel, example_inputs)"
            )
        if budget is not None or scaling != "relative":
            raise ValueError(
                "budget= and scaling= belong to cost='bitops'; with cost='latency' give budget_ms= (milliseconds)"
            )
        return latency_penalty(qmodel, latency, budget_ms)
    if cost != "bitops":
        raise ValueError(f"unknown penalty cost {cost!r}; use 'bitops' (default) or 'latency'")
    if latency is not None or budget_ms is not None:
        raise ValueError("latency= and budget_ms= need cost='latency' (the default cost is expected BitOPs)")
    return compute_penalty(qmodel, scaling=scaling, budget=budget, budget_convention=budget_convention)


def fit_budget(
    qmodel: QuantizedModel, budget: float, *, convention: str = "wa", bits: Mapping[str, int] | None = None
) -> dict[str, int]:
    """The searched bits (or ``bits``) lowered where the search minds least until they cost ≤ ``budget`` BitOPs.

    Use it between the search and :func:`freeze` when the budget is a hard limit: the budget penalty only bounds
    the relaxed model's expected cost. See :mod:`mixq_compile.cost.budget`.
    """
    _require_quantized(qmodel, "fit_budget")
    return fit_assignment(qmodel, budget, convention, bits)


def freeze(qmodel: QuantizedModel, bits: int | Mapping[str, int] | None = None) -> QuantizedModel:
    """A copy of ``qmodel`` with each site fixed at its argmax bit-width, ready for QAT.

    ``bits`` overrides the argmax: one width for every site (``bits=8``: post-training quantization at 8 bits), or
    ``{site: width}`` for some sites.
    """
    _require_quantized(qmodel, "freeze")
    if isinstance(bits, int) and not isinstance(bits, bool):
        bits = dict.fromkeys(qmodel.chosen_bits(), bits)
    frozen = quiet_deepcopy(qmodel)
    frozen.freeze_(bits)
    return frozen


def bitops(
    model: nn.Module,
    example_inputs: Sequence[Tensor],
    *,
    convention: str = "wa",
    bits: Mapping[str, int] | None = None,
) -> BitOpsReport:
    """BitOPs of ``model`` on ``example_inputs``.

    ``model`` may be a :class:`QuantizedModel` (mixed: its argmax bits; frozen: its fixed bits; ``bits`` overrides
    any site) or a plain FP32 model (captured here; every width 32). ``convention`` is ``"wa"`` or ``"paper"``
    (see :mod:`mixq_compile.cost.bitops`).
    """
    check_convention(convention)
    args = tuple(example_inputs)
    if isinstance(model, QuantizedModel):
        model.check_inputs(args)
        chosen = model.chosen_bits()
        unknown = set(bits or {}) - set(chosen)
        if unknown:
            raise ValueError(f"bits names unknown sites {sorted(unknown)}; known sites: {sorted(chosen)}")
        chosen.update(bits or {})
        shapes = record_shapes(model.graph_module, args)
        costs = quantized_bitops(model.graph_module, model.plan, shapes, chosen, convention)
        weight_bits = model.weight_bits(chosen)
        avg = sum(chosen.values()) / len(chosen)
        return as_report(convention, costs, avg, model_bytes(model, weight_bits))
    gm, _ = capture(model, args)
    return captured_fp32_bitops(gm, model, args, convention)


def captured_fp32_bitops(gm: fx.GraphModule, model: nn.Module, args: tuple, convention: str) -> BitOpsReport:
    """BitOPs of an FP32 model already captured as ``gm`` (every width 32); ``gm`` only gains plan metadata."""
    gm = find_sites(gm, QuantConfig())
    shapes = record_shapes(gm, args)
    costs = fp32_bitops(gm, gm.meta["mixq_plan"], shapes, convention)
    return as_report(convention, costs, 32.0, model_bytes(model))


def arch_parameters(qmodel: QuantizedModel) -> list[nn.Parameter]:
    """The bit-width logits (α) of every mixed quantizer: what the search learns."""
    _require_quantized(qmodel, "arch_parameters")
    return qmodel.arch_parameters()


def weight_parameters(qmodel: QuantizedModel) -> list[nn.Parameter]:
    """Every other parameter: the model's weights and the quantizers' scales and zero-points."""
    _require_quantized(qmodel, "weight_parameters")
    arch = {id(p) for p in qmodel.arch_parameters()}
    return [p for p in qmodel.parameters() if id(p) not in arch]


def search_param_groups(
    qmodel: QuantizedModel, *, lr: float = 0.01, arch_lr: float = 0.1, weight_decay: float = 0.0
) -> list[dict]:
    """Optimizer parameter groups for the search: weights at ``lr`` (with ``weight_decay``), the bit-width logits
    at ``arch_lr`` without decay. ``torch.optim.Adam(mq.search_param_groups(qmodel))``.

    Adam moves every parameter by about its ``lr`` per step whatever the gradient's scale, so with one rate the
    logits of a short search move by at most ~0.01 × steps and their probabilities stay near 1/K. Measured on a
    2-layer GAT with a residual and LayerNorm (``tests/test_api.py``), 30 steps at λ = 1: mean 5.47 bits with one
    rate of 0.01, 4.53 with ``arch_lr=0.1``.
    """
    return [
        {"params": weight_parameters(qmodel), "lr": lr, "weight_decay": weight_decay},
        {"params": arch_parameters(qmodel), "lr": arch_lr, "weight_decay": 0.0},
    ]


def sites(qmodel: QuantizedModel) -> SiteTable:
    """A printable table of every quantization site: name, kind, shape, candidates, probabilities or bits."""
    _require_quantized(qmodel, "sites")
    return site_table(qmodel)


def _require_quantized(model: object, what: str) -> None:
    if not isinstance(model, QuantizedModel):
        raise TypeError(
            f"{what}() needs a model returned by mixq_compile.quantize(), got {type(model).__name__}; "
            "call mixq_compile.quantize(model, example_inputs) first"
        )
