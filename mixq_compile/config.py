"""User intent as data: which kinds of quantization points to quantize, with which candidates and specs.

Nothing here touches a graph. Passes read a :class:`QuantConfig`; users build or ``replace()`` one to override
defaults, e.g. ``QuantConfig(kinds=frozenset({"weight", "linear_out"}))`` or per-site candidates by name pattern.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .quant.spec import QuantSpec, check_candidates

#: Every kind of quantization point the site finder knows, and what it means.
SITE_KINDS: Mapping[str, str] = dict(
    {
        "input": "a model input (node features) entering a dense op or a message",
        "activation": "an intermediate tensor entering a dense op (matmul / linear) that is not yet quantized",
        "weight": "a parameter entering a dense op",
        "linear_out": "the output of a dense op (linear, matmul, addmm, bmm)",
        "message": "node features gathered along edges (x_j) entering an aggregation, when not yet quantized",
        "edge_weight": "the per-edge factor multiplying x_j inside a message (e.g. GCN normalisation, attention)",
        "aggregate": "the output of a sum/mean aggregation over edges (scatter, index_add, segment)",
        "pool_input": "node features entering a graph-level pooling (readout), when not yet quantized",
        "pool": "the output of a sum/mean graph-level pooling",
    }
)


#: ``QuantSpec.tail_margin`` of the default activation and edge-weight specs.
TAIL_MARGIN = 6.0


def _default_specs() -> Mapping[str, QuantSpec]:
    # Weights: symmetric per-output-channel, so integer matmuls need no weight zero-point terms.
    # Activations: affine per-tensor; a per-feature scale would vary along a matmul's reduction axis and could
    # not be factored out of an integer dot product. Edge weights: unsigned (GCN normalisation, attention >= 0).
    # Everything but weights starts from the MSE-optimal clipping of its range: with min/max a 2-bit grid over
    # row-normalised node features rounds nearly every value to zero (Cora: ~50 % instead of ~81 % accuracy).
    # Over n calibration batches, 8-bit activation ranges reach past the most extreme batch (tail_margin / n):
    # graphs not calibrated on reach further than the batches did (see RangeObserver._tail_extended).
    activation = QuantSpec(signed=True, range_init="mse", tail_margin=TAIL_MARGIN)
    return dict(
        {
            "input": activation,
            "activation": activation,
            "weight": QuantSpec(signed=True, symmetric=True, granularity="channel", axis=0),
            "linear_out": activation,
            "message": activation,
            "edge_weight": QuantSpec(signed=False, range_init="mse", bounds=(-1.0, 1.0), tail_margin=TAIL_MARGIN),
            "aggregate": activation,
            "pool_input": activation,
            "pool": activation,
        }
    )


@dataclass(frozen=True)
class DegreeQuant:
    """Degree-Quant (Tailor et al., ICLR 2021) as used by MixQ's DQ variant (MIXQ_METHOD.md §5.3).

    Activations (every non-weight site) start from percentile ranges instead of min/max, and during training each
    forward pass protects node ``v`` with probability ``low + (high - low) * CDF_in-degree(deg(v))``: protected
    nodes' values (node-level sites) and messages from protected source nodes (edge-level sites) skip quantization.
    High in-degree nodes, whose aggregates have the widest ranges, are protected most often. At eval time
    everything is quantized.

    Attributes:
        low: protection probability of the lowest in-degree (CDF 0).
        high: protection probability of the highest in-degree (CDF 1).
        percentile: lower tail fraction of the activation ranges (0.01: 1st to 99th percentile).
    """

    low: float = 0.0
    high: float = 0.1
    percentile: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"Degree-Quant needs 0 <= low <= high <= 1, got low={self.low}, high={self.high}")
        if not 0.0 <= self.percentile < 0.5:
            raise ValueError(f"Degree-Quant percentile must be in [0, 0.5), got {self.percentile!r}")


@dataclass(frozen=True)
class QuantConfig:
    """How ``quantize()`` places quantizers.

    Attributes:
        bit_widths: candidate bit-widths of every site (the MixQ search space).
        kinds: which site kinds get a quantizer (see :data:`SITE_KINDS`).
        specs: the :class:`QuantSpec` per kind (its ``bits`` is replaced by each candidate). Activations produced by
            a non-negative op (ReLU, sigmoid, softmax) switch to the unsigned range automatically when
            ``unsigned_after_relu`` is set.
        site_bit_widths: per-site candidate overrides, ``{glob pattern on site name: bit_widths}``; first match wins.
        skip: glob patterns of site names to leave in float.
        unsigned_after_relu: use unsigned codes for activations known to be non-negative.
        cache_structure: compute graph-structure work (self-loops, degrees, GCN normalisation: everything that
            depends only on ``edge_index``/``batch`` and sizes) once per graph instead of on every call, like PyG's
            ``cached=True`` (pass :func:`~mixq_compile.passes.structure.cache_structure`). Opt-in because the
            cache is keyed on the identity of the graph tensors (see
            :class:`~mixq_compile.ir.structure_cache.StructureCache`).
        degree_quant: opt-in :class:`DegreeQuant` (percentile activation ranges and stochastic protection of
            high in-degree nodes during training); ``None`` (default) is plain MixQ.
        quantize_unread_sites: also quantize values whose codes no integer work reads: op outputs that only float
            ops or the model's outputs read (the last layer's output; an aggregation whose bias is added in float
            before the next layer's input is quantized), and the input of a max/min aggregation whose result is read
            that way (a softmax's stabilising maximum). Off by default: the integer program dequantizes such values
            exactly from their int32 accumulators, and rounding them only adds error (see
            :meth:`~mixq_compile.passes.find_sites._SiteFinder.drop_unread_sites`). The paper quantizes its last
            layer's output; the paper-table experiments set it.
    """

    bit_widths: tuple[int, ...] = (2, 4, 8)
    kinds: frozenset[str] = frozenset(SITE_KINDS)
    specs: Mapping[str, QuantSpec] = field(default_factory=_default_specs)
    site_bit_widths: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    unsigned_after_relu: bool = True
    cache_structure: bool = False
    degree_quant: DegreeQuant | None = None
    quantize_unread_sites: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bit_widths", check_candidates(self.bit_widths))
        unknown = set(self.kinds) - set(SITE_KINDS)
        if unknown:
            raise ValueError(f"unknown site kinds {sorted(unknown)}; known kinds: {sorted(SITE_KINDS)}")
        missing = set(SITE_KINDS) - set(self.specs)
        if missing:
            object.__setattr__(self, "specs", {**_default_specs(), **self.specs})
        for pattern, bits in self.site_bit_widths.items():
            check_candidates(bits)
            if not isinstance(pattern, str):
                raise ValueError(f"site_bit_widths keys must be glob patterns (str), got {pattern!r}")

    def spec_for(self, kind: str) -> QuantSpec:
        """The spec of a site kind: ``specs[kind]``, with Degree-Quant's percentile range for non-weight kinds."""
        spec = self.specs[kind]
        if self.degree_quant is None or kind == "weight":
            return spec
        return replace(spec, range_init="percentile", percentile=self.degree_quant.percentile)

    def candidates_for(self, site_name: str) -> tuple[int, ...]:
        for pattern, bits in self.site_bit_widths.items():
            if fnmatch.fnmatchcase(site_name, pattern):
                return check_candidates(bits)
        return self.bit_widths

    def skipped(self, site_name: str) -> bool:
        return any(fnmatch.fnmatchcase(site_name, pattern) for pattern in self.skip)

    def replace(self, **changes: object) -> QuantConfig:
        return replace(self, **changes)
