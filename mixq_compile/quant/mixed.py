"""The MixQ mixed-precision quantizer: one quantization point, K candidate bit-widths, learnable logits.

Output is the convex combination ``sum_k softmax(alpha)_k * FQ_{b_k}(x)`` (a DARTS-style relaxation). Each candidate
is its own :class:`FakeQuantizer` with its own scale and zero-point; all candidates read the same tensor, so a weight
is stored once and shared. Logits start at ``softmax(softmax(b))``, the reference's mild prior for the largest
bit-width (e.g. mixing probabilities ``[0.2916, 0.2926, 0.4158]`` for ``(2, 4, 8)``). The K candidates and their
mixing run as one fused autograd function (:func:`~mixq_compile.quant.functional.mixed_lsq_fake_quantize`): the
search runs it at every site on every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import mixed_lsq_fake_quantize
from .quantizer import FakeQuantizer
from .spec import QuantSpec, check_candidates


def initial_logits(bit_widths: tuple[int, ...]) -> Tensor:
    bits = torch.tensor(bit_widths, dtype=torch.float32)
    return torch.softmax(torch.softmax(bits, dim=0), dim=0)


class MixedQuantizer(nn.Module):
    """K candidate fake quantizers mixed by ``softmax(alpha)``."""

    def __init__(self, spec: QuantSpec, bit_widths: tuple[int, ...]) -> None:
        super().__init__()
        self.bit_widths = check_candidates(bit_widths)
        self.spec = spec
        self.candidates = nn.ModuleList(FakeQuantizer(spec.with_bits(b)) for b in self.bit_widths)
        self.alpha = nn.Parameter(initial_logits(self.bit_widths))
        self.last_numel = 0  # elements seen in the latest forward: the paper-scaled penalty weighs bits by size

    def extra_repr(self) -> str:
        return f"bit_widths={self.bit_widths}"

    def probabilities(self) -> Tensor:
        return torch.softmax(self.alpha, dim=0)

    def expected_bits(self) -> Tensor:
        """Differentiable ``E[b] = sum_k p_k b_k``."""
        bits = torch.tensor(self.bit_widths, dtype=self.alpha.dtype, device=self.alpha.device)
        return (self.probabilities() * bits).sum()

    def chosen_bits(self) -> int:
        """The argmax candidate (ties go to the higher bit-width)."""
        probs = self.probabilities().detach()
        best = probs.max()
        winners = [b for b, p in zip(self.bit_widths, probs.tolist()) if p == best.item()]
        return max(winners)

    def chosen(self) -> FakeQuantizer:
        return self.candidates[self.bit_widths.index(self.chosen_bits())]

    def candidate(self, bits: int) -> FakeQuantizer:
        if bits not in self.bit_widths:
            raise ValueError(f"{bits} is not a candidate of this site; candidates are {self.bit_widths}")
        return self.candidates[self.bit_widths.index(bits)]

    def start_observing(self) -> None:
        """Calibration: every candidate observes the FP32 input, which passes through unchanged (see
        :meth:`FakeQuantizer.start_observing`)."""
        for candidate in self.candidates:
            candidate.start_observing()

    def finish_observing(self) -> bool:
        """Set every candidate's range from its observations, each for its own bit-width; False if none were seen."""
        return all([candidate.finish_observing() for candidate in self.candidates])

    def stop_observing(self) -> None:
        for candidate in self.candidates:
            candidate.stop_observing()

    def forward(self, x: Tensor) -> Tensor:
        self.last_numel = x.numel()
        if self.candidates[0].observer is not None:
            for candidate in self.candidates:
                candidate.forward(x)
            return x
        scales, zero_points, ranges, factors = zip(*(c.fused_arguments(x) for c in self.candidates))
        return mixed_lsq_fake_quantize(x, self.probabilities(), scales, zero_points, ranges, factors)
