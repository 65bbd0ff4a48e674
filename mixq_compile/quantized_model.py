"""The quantized model: a captured graph with quantizers, plus its site plan and input signature."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor, fx, nn

from .config import QuantConfig
from .cost.ops import NodeShapes, record_shapes
from .ir.meta import PLAN_KEY, QUANTIZER_ROOT
from .ir.plan import SitePlan
from .ir.signature import InputSpec, Signature
from .passes.freeze import freeze_quantizers
from .passes.quantize_bias import quantize_bias
from .quant.mixed import MixedQuantizer
from .quant.quantizer import FakeQuantizer


class QuantizedModel(nn.Module):
    """A trainable quantized model returned by :func:`mixq_compile.quantize` (mixed) or :func:`freeze` (fixed).

    Behaves like any ``nn.Module``: ``train()``/``eval()`` switch dropout and batch norm, ``parameters()`` holds the
    FP32 weights, the quantizers' scales/zero-points and (while searching) the bit-width logits ``alpha``, and
    ``state_dict`` round-trips. Inputs are checked against the captured signature before the graph runs.
    """

    def __init__(self, graph_module: fx.GraphModule, signature: Signature, config: QuantConfig) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.signature = signature
        self.config = config
        self.example_shapes = NodeShapes({})

    def record_example_shapes(self, example_inputs: tuple[Tensor, ...]) -> None:
        """Record every node's shape on ``example_inputs``: what the penalty and BitOPs count on."""
        self.check_inputs(example_inputs)
        self.example_shapes = record_shapes(self.graph_module, example_inputs)

    def freeze_(self, bits: Mapping[str, int] | int | None = None) -> None:
        """In place: fix every site at its argmax (or ``bits[site]``, or ``bits`` everywhere) bit-width."""
        quantize_bias(freeze_quantizers(self.graph_module, bits))

    def weight_bits(self, bits: Mapping[str, int]) -> dict[str, int]:
        """Parameter path -> bit-width, for the weight sites."""
        targets = {n.name: n.target for n in self.graph_module.graph.nodes if n.op == "get_attr"}
        return {targets[s.node]: bits[s.name] for s in self.plan.sites if s.kind == "weight" and s.node in targets}

    @property
    def input_specs(self) -> tuple[InputSpec, ...]:
        return self.signature.inputs

    @property
    def plan(self) -> SitePlan:
        return self.graph_module.meta[PLAN_KEY]

    @property
    def is_mixed(self) -> bool:
        return any(isinstance(q, MixedQuantizer) for _, q in self.quantizers())

    def quantizers(self) -> Iterator[tuple[str, MixedQuantizer | FakeQuantizer]]:
        """(site name, quantizer module) for every site, in graph order."""
        modules = getattr(self.graph_module, QUANTIZER_ROOT)
        for site in self.plan.sites:
            yield site.name, modules[site.module_key]

    def quantizer(self, site: str) -> MixedQuantizer | FakeQuantizer:
        return getattr(self.graph_module, QUANTIZER_ROOT)[self.plan.site(site).module_key]

    def arch_parameters(self) -> list[nn.Parameter]:
        """The bit-width logits (alpha) of every mixed quantizer — the search's architecture parameters."""
        return [q.alpha for _, q in self.quantizers() if isinstance(q, MixedQuantizer)]

    def chosen_bits(self) -> dict[str, int]:
        """Each site's bit-width: the argmax candidate while mixed, the fixed width after freezing."""
        return {name: q.chosen_bits() if isinstance(q, MixedQuantizer) else q.bits for name, q in self.quantizers()}

    def check_inputs(self, args: tuple) -> None:
        self.signature.check(args, "the quantized model")

    def forward(self, *args: Tensor) -> Tensor:
        self.check_inputs(args)
        return self.graph_module(*args)
