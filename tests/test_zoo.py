"""quantize() on a zoo of unmodified FP32 PyG models: sites, 8-bit accuracy, gradients, freeze, save/load, resize."""

from __future__ import annotations

import warnings

import pytest
import torch

import mixq_compile as mq
from mixq_compile.quant import FakeQuantizer, MixedQuantizer

from helpers import unusual_graphs
from zoo import ALL, MP_KINDS, lowered

#: Relative L2 error of the 8-bit model vs FP32 (measured 0.003-0.019 across the zoo; random weights and inputs).
MAX_8BIT_ERROR = 0.04


def _quantize(name, bit_widths=(2, 4, 8)):
    factory, inputs = ALL[name]
    torch.manual_seed(0)
    model = factory().eval()
    args = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model, args, bit_widths)
    return model, qmodel, args


def _rel_error(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("name", sorted(ALL))
def test_eight_bit_output_is_close_to_fp32_and_message_passing_sites_are_found(name):
    model, qmodel, args = _quantize(name, bit_widths=(8,))
    qmodel.eval()
    kinds = {row.kind for row in mq.sites(qmodel)}
    assert kinds & MP_KINDS, f"{name}: no message-passing site among {kinds}"
    assert "weight" in kinds
    with torch.no_grad():
        error = _rel_error(qmodel(*args), model(*args))
    assert error < MAX_8BIT_ERROR, f"{name}: 8-bit relative error {error:.4f}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_gradients_reach_weights_and_alpha_and_freeze_save_load_and_resize_work(name, tmp_path):
    _, qmodel, args = _quantize(name)
    qmodel.train()
    out = qmodel(*args)
    loss = out.pow(2).mean() + 0.1 * mq.penalty(qmodel)
    loss.backward()
    weights = [p for n, p in qmodel.named_parameters() if n.endswith("weight") and ".mixq." not in n]
    assert weights and all(p.grad is not None for p in weights)
    assert any(p.grad.abs().sum() > 0 for p in weights)
    alphas = qmodel.arch_parameters()
    assert alphas and all(a.grad is not None for a in alphas)
    assert sum(float(a.grad.abs().sum()) for a in alphas) > 0

    frozen = mq.freeze(qmodel)
    assert not frozen.is_mixed
    assert all(isinstance(q, FakeQuantizer) for _, q in frozen.quantizers())
    assert any(isinstance(q, MixedQuantizer) for _, q in qmodel.quantizers()), "freeze must not touch the original"
    frozen.eval()
    with torch.no_grad():
        expected = frozen(*args)
    assert torch.isfinite(expected).all()

    mq.save(frozen, tmp_path / "model")
    factory, _ = ALL[name]
    loaded = mq.load(tmp_path / "model", factory).eval()
    with torch.no_grad():
        assert torch.equal(loaded(*args), expected)
    assert loaded.chosen_bits() == frozen.chosen_bits()

    other = ALL[name][1](seed=1)
    assert other[0].shape[0] != args[0].shape[0]
    with torch.no_grad():
        assert frozen(*other).shape[0] in (other[0].shape[0], int(other[-1].max()) + 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ALL))
def test_artifacts_give_the_programs_answers_on_unusual_graphs(name, tmp_path):
    """Every zoo model at random bits, exported to every available backend, against the integer program on graphs
    unlike its example: a hub, duplicated edges, self loops, nodes without edges, features far off the ranges."""
    from mixq_compile.runtimes import available_backends

    frozen, program = lowered(name)
    args = ALL[name][1]()
    usable, _ = available_backends(["torch", "onnx", "tvm"])
    for _, backend, _ in usable:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            artifact = mq.load_artifact(mq.export(frozen, args, tmp_path / backend, backend=backend))
        for label, inputs in unusual_graphs(*args).items():
            with torch.no_grad():
                expected = program(*inputs)
            torch.testing.assert_close(artifact(*inputs), expected, rtol=1e-6, atol=1e-6,
                                       msg=f"{name} on {backend}, {label} graph")  # fmt: skip
