"""Pass: fix each site's precision — replace every mixed quantizer by the fixed quantizer of one candidate.

Pre-condition: quantizer modules under ``gm.mixq`` (from :func:`insert_quantizers`), mixed or already fixed.
Post-condition: every ``gm.mixq.<site>`` is a :class:`FakeQuantizer`: the argmax candidate of the search, or the
bit-width given in ``bits`` (per site, or one int for every site). The chosen candidate keeps its learned scale and
zero-point, so fine-tuning (QAT) starts from the searched state.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import fx

from ..ir.meta import PLAN_KEY, QUANTIZER_ROOT
from ..ir.plan import SitePlan
from ..quant.mixed import MixedQuantizer
from ..quant.quantizer import FakeQuantizer
from ..quant.spec import QuantSpec, check_bits


def freeze_quantizers(gm: fx.GraphModule, bits: Mapping[str, int] | int | None = None) -> fx.GraphModule:
    """Replace mixed quantizers by fixed ones (argmax, ``bits[site]``, or ``bits`` at every site); see module
    docstring."""
    plan: SitePlan = gm.meta[PLAN_KEY]
    bits = {s.name: bits for s in plan.sites} if isinstance(bits, int) else dict(bits or {})
    known = {s.name for s in plan.sites}
    unknown = set(bits) - known
    if unknown:
        raise ValueError(f"bits names unknown sites {sorted(unknown)}; known sites: {sorted(known)}")
    quantizers = getattr(gm, QUANTIZER_ROOT)
    for site in plan.sites:
        current = quantizers[site.module_key]
        wanted = bits.get(site.name)
        if wanted is not None:
            check_bits(wanted)
        if isinstance(current, MixedQuantizer):
            if wanted is None:
                fixed = current.chosen()
            elif wanted in current.bit_widths:
                fixed = current.candidate(wanted)
            else:
                fixed = _recalibrated(current.chosen(), wanted)
        elif wanted is not None and wanted != current.bits:
            fixed = _recalibrated(current, wanted)
        else:
            fixed = current
        quantizers[site.module_key] = fixed
    return gm


def _recalibrated(template: FakeQuantizer, bits: int) -> FakeQuantizer:
    """A quantizer with ``bits`` that covers the same real range as ``template`` (for off-candidate overrides)."""
    spec: QuantSpec = template.spec.with_bits(bits)
    fresh = FakeQuantizer(spec)
    if bool(template.initialized):
        zero_point = template.zero_point.detach().round()
        low = (template.spec.qmin - zero_point) * template.scale.detach()
        high = (template.spec.qmax - zero_point) * template.scale.detach()
        fresh.calibrate_range(low.clamp(max=0), high.clamp(min=0))
    return fresh
