"""Helpers every experiment shares: seeding, thread counts, quiet quantization, cost reports, data caching per
process, and whether PyG eager fits in memory."""

from __future__ import annotations

import contextlib
import functools
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

import mixq_compile as mq
from mixq_compile.config import DegreeQuant, QuantConfig
from mixq_compile.quant import QuantSpec


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (timings at the deployment's thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def eager_does_not_fit(messages: int, hidden: int, copies: float = 3.0, usable: float = 1.0) -> str | None:
    """Why one whole-graph PyG eager pass cannot run here, or None: it materialises about ``copies``
    ``[messages, hidden]`` float32 tensors at once (GCNConv: gathered inputs, messages and their scatter), which
    must fit in ``usable`` of ``MemAvailable`` (``/proc/meminfo``; where it is missing, eager is assumed to fit)."""
    need = copies * messages * hidden * 4
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    if need <= usable * available:
        return None
    return f"its [E, {hidden}] message tensors need ~{need / 2**30:.0f} GiB, {available / 2**30:.0f} GiB are available"


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch seeds: every run records its seed, so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.cache
def load(name: str):
    """The data set, loaded once per worker process (root from ``$MIXQ_DATA``, set by the runner)."""
    from mixq_compile.data import load_dataset

    return load_dataset(name)


def quant_config(
    bit_widths: Sequence[int],
    degree_quant: bool = False,
    input_granularity: str = "tensor",
    range_init: str | None = None,
) -> QuantConfig:
    """The default config, optionally with Degree-Quant, with one scale per feature of the tensors entering a
    dense op (``"column"``: the reference's granularity for the node features X, which sit behind dropout and are
    therefore an ``activation`` site; our default is one scale per tensor), or with another initial range for
    every non-weight site (``range_init``; the default is the MSE clipping). The last layer's output is quantized,
    as the paper does (``quantize_unread_sites``; the product's default dequantizes it exactly instead)."""
    extra: dict = {"degree_quant": DegreeQuant()} if degree_quant else {}
    specs = dict(QuantConfig().specs)
    if input_granularity == "column":
        column = QuantSpec(signed=True, granularity="channel", axis=1)
        specs |= {"input": column, "activation": column}
    elif input_granularity != "tensor":
        raise ValueError(f"input_granularity must be 'tensor' or 'column', got {input_granularity!r}")
    if range_init is not None:
        specs = {k: v if k == "weight" else replace(v, range_init=range_init) for k, v in specs.items()}
    return QuantConfig(bit_widths=tuple(bit_widths), specs=specs, quantize_unread_sites=True, **extra)


def quantize(
    model: nn.Module,
    inputs: Sequence[Tensor],
    bit_widths: Sequence[int],
    degree_quant: bool = False,
    input_granularity: str = "tensor",
    range_init: str | None = None,
):
    """``mq.quantize`` without the warning about ops left in float (the site report lists them)."""
    config = quant_config(bit_widths, degree_quant, input_granularity, range_init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mq.quantize(model, tuple(inputs), config=config)


def costs(model: nn.Module, inputs: Sequence[Tensor], prefix: str = "") -> dict[str, float]:
    """GBitOPs in both conventions and the average bit-width of a (frozen or FP32) model."""
    paper = mq.bitops(model, tuple(inputs), convention="paper")
    wa = mq.bitops(model, tuple(inputs), convention="wa")
    return {
        f"{prefix}gbitops_paper": paper.gbitops,
        f"{prefix}gbitops_wa": wa.gbitops,
        f"{prefix}avg_bits": wa.avg_bits,
    }


def bits_summary(bits: Mapping[str, int]) -> list[int]:
    """Bit-widths in site order (the order of ``mq.sites``), for compact records."""
    return [int(b) for b in bits.values()]
