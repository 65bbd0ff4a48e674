"""Properties of the fake quantizer, its STE/LSQ gradients and the mixed quantizer."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixq_compile.quant import FakeQuantizer, MixedQuantizer, QuantSpec, integer_range
from mixq_compile.quant.functional import fake_quantize, quantize_codes

BITS = st.integers(min_value=1, max_value=16)


def _fixed_quantizer(bits: int, signed: bool, low: float, high: float) -> FakeQuantizer:
    q = FakeQuantizer(QuantSpec(bits=bits, signed=signed))
    q.calibrate(torch.tensor([low, high]))
    return q


@settings(max_examples=60, deadline=None)
@given(bits=BITS, signed=st.booleans(), seed=st.integers(0, 10_000))
def test_round_trip_error_within_half_a_step_inside_the_range(bits, signed, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(257, generator=gen) * 3
    q = FakeQuantizer(QuantSpec(bits=bits, signed=signed))
    q.calibrate(x)
    scale = q.scale.detach()
    zp = q.zero_point.detach().round()
    lo = (q.spec.qmin - zp) * scale
    hi = (q.spec.qmax - zp) * scale
    inside = (x >= lo) & (x <= hi)
    err = (q(x) - x).abs()
    tol = 1e-5 * (1 + x.abs())
    assert inside.any()
    assert (err[inside] <= scale / 2 + tol[inside]).all()
    # The integer zero-point shifts the grid by at most half a step, so the calibration data itself is never
    # clamped by more than that either.
    assert (err <= scale / 2 + tol).all()


@settings(max_examples=40, deadline=None)
@given(bits=BITS, signed=st.booleans())
def test_values_outside_the_range_are_clamped_to_its_ends(bits, signed):
    q = _fixed_quantizer(bits, signed, -1.0, 2.0)
    scale, zp = q.scale.detach(), q.zero_point.detach().round()
    lo = float((q.spec.qmin - zp) * scale)
    hi = float((q.spec.qmax - zp) * scale)
    out = q(torch.tensor([lo - 100.0, hi + 100.0]))
    assert out[0].item() == pytest.approx(lo, rel=1e-5, abs=1e-6)
    assert out[1].item() == pytest.approx(hi, rel=1e-5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(bits=BITS, signed=st.booleans(), seed=st.integers(0, 10_000))
def test_fake_quantization_is_idempotent(bits, signed, seed):
    x = torch.randn(100, generator=torch.Generator().manual_seed(seed))
    q = FakeQuantizer(QuantSpec(bits=bits, signed=signed))
    once = q(x)
    assert torch.equal(q(once), once)


@settings(max_examples=40, deadline=None)
@given(bits=BITS, signed=st.booleans(), seed=st.integers(0, 10_000))
def test_integer_codes_stay_in_range_and_count_at_most_two_to_the_bits_levels(bits, signed, seed):
    x = torch.randn(4096, generator=torch.Generator().manual_seed(seed)) * 10
    q = FakeQuantizer(QuantSpec(bits=bits, signed=signed))
    q.calibrate(x[:100])  # a narrower range so that clamping happens too
    codes = q.codes(x)
    qmin, qmax = integer_range(bits, signed)
    assert codes.min() >= qmin and codes.max() <= qmax
    assert torch.equal(codes, codes.round())
    assert codes.unique().numel() <= 2**bits


def test_one_bit_is_binary_not_ternary():
    assert integer_range(1, signed=True) == (-1, 0)
    assert integer_range(1, signed=False) == (0, 1)
    q = FakeQuantizer(QuantSpec(bits=1, signed=False))
    assert q(torch.linspace(0, 1, 101)).unique().tolist() == [0.0, 1.0]


@pytest.mark.parametrize("bits", [0, 17, 33, -1, 2.5, True])
def test_bad_bit_widths_raise_value_error(bits):
    with pytest.raises(ValueError, match="bit-width"):
        QuantSpec(bits=bits)


def test_nan_tensor_cannot_calibrate():
    q = FakeQuantizer(QuantSpec())
    with pytest.raises(ValueError, match="NaN or infinite"):
        q(torch.tensor([0.0, float("nan")]))


def test_input_gradient_is_straight_through_inside_and_zero_outside():
    q = _fixed_quantizer(4, True, -1.0, 1.0)
    x = torch.tensor([-0.5, 0.1, 0.7, -5.0, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_scale_and_zero_point_gradients_match_finite_differences_where_defined():
    """Where the quantizer clamps, its output (q_end - z) * s is smooth in s and z: LSQ+ gradients are exact there."""
    x = torch.tensor([-9.0, -7.5, 6.0, 11.0], dtype=torch.float64)
    z = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.137, dtype=torch.float64, requires_grad=True)
    qmin, qmax = integer_range(4, True)

    def f(scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return (fake_quantize(x, scale, zero_point, qmin, qmax) ** 2).sum()

    f(s, z).backward()
    eps = 1e-6
    with torch.no_grad():
        d_s = (f(s + eps, z) - f(s - eps, z)) / (2 * eps)
        d_z = (f(s, z + eps) - f(s, z - eps)) / (2 * eps)
        codes = quantize_codes(x, s, z, qmin, qmax)
    assert set(codes.tolist()) <= {float(qmin), float(qmax)}, "all inputs must be clamped for this check"
    assert s.grad.item() == pytest.approx(d_s.item(), rel=1e-6)
    assert z.grad.item() == pytest.approx(d_z.item(), rel=1e-6)


def test_scale_gradient_contains_the_rounding_error_term():
    """Inside the range d x_hat / d s = round(x/s) - x/s (LSQ), not the reference's x/s."""
    q = _fixed_quantizer(8, True, -4.0, 4.0)
    x = torch.tensor([0.3])
    q(x).sum().backward()
    s = q.scale.detach().item()
    z = q.zero_point.detach().round().item()
    u = 0.3 / s + z
    factor = 1.0 / math.sqrt(1 * q.spec.qmax)
    assert q.scale.grad.item() == pytest.approx((round(u) - u) * factor, rel=1e-4, abs=1e-7)


def test_zero_point_used_in_forward_is_integral_even_after_a_fractional_update():
    q = _fixed_quantizer(8, False, -1.0, 3.0)
    with torch.no_grad():
        q.zero_point.add_(0.37)
    with torch.no_grad():
        _, zp = q.scale_and_zero_point(torch.zeros(3))
    assert zp.item() == round(zp.item())


def test_per_channel_weight_quantizer_has_one_scale_per_output_channel():
    w = torch.randn(5, 7) * torch.arange(1, 6).unsqueeze(1)
    q = FakeQuantizer(QuantSpec(bits=8, symmetric=True, granularity="channel", axis=0))
    out = q(w)
    assert q.scale.shape == (5,)
    assert torch.all(q.zero_point == 0)
    assert (out - w).abs().max() <= q.scale.max() / 2 + 1e-6


def test_percentile_range_ignores_outliers():
    x = torch.cat([torch.linspace(-1, 1, 1000), torch.tensor([100.0])])
    q = FakeQuantizer(QuantSpec(bits=8, range_init="percentile", percentile=0.01))
    q.calibrate(x)
    assert q.scale.item() < 0.02


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_mse_range_clips_outliers_and_never_does_worse_than_min_max(granularity):
    # Row-normalised bag-of-words features (as Cora's): mostly zeros, typical values 1/20, a few rows with 1 or 2
    # words. A 2-bit min/max grid rounds every typical value to zero; the MSE clipping keeps them apart.
    g = torch.Generator().manual_seed(0)
    words = (torch.rand(500, 64, generator=g) < 0.3).float()
    words[:3] = 0
    words[:3, 0] = 1
    x = words / words.sum(dim=1, keepdim=True).clamp_min(1)

    def error(range_init):
        q = FakeQuantizer(QuantSpec(bits=2, signed=False, granularity=granularity, axis=1, range_init=range_init))
        out = q(x)
        return (out - x).square().mean().item(), q.scale.detach().mean().item(), q

    mse_error, mse_scale, q = error("mse")
    minmax_error, minmax_scale, _ = error("minmax")
    assert mse_error < minmax_error
    assert mse_scale < minmax_scale
    typical = (x > 0) & (x < 0.2)
    assert (q(x)[typical] > 0).float().mean() > 0.9, "typical values survive"


def test_state_dict_round_trips_per_channel_shapes():
    src = FakeQuantizer(QuantSpec(granularity="channel", axis=1))
    src(torch.randn(4, 6))
    dst = FakeQuantizer(QuantSpec(granularity="channel", axis=1))
    dst.load_state_dict(src.state_dict())
    x = torch.randn(4, 6)
    assert torch.equal(dst(x), src(x))


def test_mixed_initial_probabilities_prefer_the_largest_bit_width_as_in_the_paper():
    probs = MixedQuantizer(QuantSpec(), (2, 4, 8)).probabilities()
    assert probs.tolist() == pytest.approx([0.2916, 0.2926, 0.4158], abs=1e-4)


def test_mixed_quantizer_equals_the_single_quantizer_when_one_logit_dominates():
    x = torch.randn(50, 3)
    mixed = MixedQuantizer(QuantSpec(), (2, 4, 8))
    mixed(x)
    with torch.no_grad():
        mixed.alpha.copy_(torch.tensor([-50.0, 50.0, -50.0]))
    assert torch.allclose(mixed(x), mixed.candidate(4)(x), atol=1e-6)
    assert mixed.chosen_bits() == 4


def test_mixed_output_is_the_probability_weighted_sum_and_alpha_gets_gradients():
    x = torch.randn(30, 4)
    mixed = MixedQuantizer(QuantSpec(), (2, 8))
    out = mixed(x)
    p = mixed.probabilities()
    expected = p[0] * mixed.candidates[0](x) + p[1] * mixed.candidates[1](x)
    assert torch.allclose(out, expected)
    (out - x).pow(2).sum().backward()
    assert mixed.alpha.grad is not None and mixed.alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("candidates", [(), (2, 2), (0, 4), (4, 40)])
def test_bad_candidate_lists_raise_value_error(candidates):
    with pytest.raises(ValueError):
        MixedQuantizer(QuantSpec(), candidates)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fused_quantizer_matches_the_composite_ste_formulation(granularity, symmetric):
    torch.manual_seed(1)
    spec = QuantSpec(bits=3, granularity=granularity, axis=1, symmetric=symmetric)
    q = FakeQuantizer(spec)
    q.calibrate(torch.randn(40, 6) * 0.5)  # narrower than the data below, so some values clamp
    x = (torch.randn(40, 6) * 2).requires_grad_()
    fused = q(x)
    fused.backward(torch.linspace(-1, 1, 240).reshape(40, 6))
    grads = [t.grad.clone() for t in (x, q.scale)] + ([] if symmetric else [q.zero_point.grad.clone()])
    for t in (x, q.scale, q.zero_point):
        t.grad = None
    scale, zp = q.scale_and_zero_point(x)
    composite = fake_quantize(x, scale, zp, spec.qmin, spec.qmax)
    composite.backward(torch.linspace(-1, 1, 240).reshape(40, 6))
    assert torch.allclose(fused, composite, atol=1e-6)
    assert torch.allclose(grads[0], x.grad)
    assert torch.allclose(grads[1], q.scale.grad, atol=1e-5)
    if not symmetric:
        assert torch.allclose(grads[2], q.zero_point.grad, atol=1e-5)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_fused_mixed_quantizer_matches_the_composite_sum_of_candidates(granularity, symmetric):
    """Values and gradients (x, every scale and zero-point, alpha) equal sum_k softmax(alpha)_k * FQ_k(x)."""
    torch.manual_seed(2)
    spec = QuantSpec(granularity=granularity, axis=1, symmetric=symmetric)
    mixed = MixedQuantizer(spec, (2, 4, 8))
    mixed(torch.randn(40, 6) * 0.5)  # calibrate narrower than the data below, so every candidate clamps some values
    with torch.no_grad():
        mixed.alpha.copy_(torch.tensor([0.3, -0.2, 0.5]))
        for c in mixed.candidates:  # fractional zero-points: the forward pass must round them
            c.zero_point.add_(0.3 * (not symmetric))
    x = (torch.randn(40, 6) * 2).requires_grad_()
    upstream = torch.linspace(-1, 1, 240).reshape(40, 6)
    params = [x, mixed.alpha] + [p for c in mixed.candidates for p in (c.scale, c.zero_point)]

    def grads(out):
        for p in params:
            p.grad = None
        out.backward(upstream)
        return [None if p.grad is None else p.grad.clone() for p in params]

    fused = mixed(x)
    fused_grads = grads(fused)
    probs = mixed.probabilities()
    composite = sum(
        probs[k] * fake_quantize(x, *c.scale_and_zero_point(x), c.spec.qmin, c.spec.qmax)
        for k, c in enumerate(mixed.candidates)
    )
    composite_grads = grads(composite)
    assert torch.allclose(fused, composite, atol=1e-6)
    clamped = [(c.codes(x) == c.spec.qmin) | (c.codes(x) == c.spec.qmax) for c in mixed.candidates]
    assert all(m.any() and not m.all() for m in clamped), "the check needs values inside and outside every range"
    for got, want in zip(fused_grads, composite_grads):
        if want is None or not want.abs().sum():
            assert got is None or not got.abs().sum()
        else:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("low", [0.0, -1.0])  # zero-point zero (skipped add) and non-zero
def test_mixed_quantizer_output_without_gradients_equals_the_training_output(low):
    mixed = MixedQuantizer(QuantSpec(signed=False), (2, 4, 8))
    x = torch.linspace(low, 3.0, 500)
    mixed(x[::7])  # calibrate on a subset, so that some values are clamped
    with torch.no_grad():
        evaluated = mixed(x)
    trained = mixed(x)
    assert trained.requires_grad and torch.equal(evaluated, trained)
    assert bool(mixed.candidates[0].zero_point.round().eq(0).all()) == (low == 0.0)
