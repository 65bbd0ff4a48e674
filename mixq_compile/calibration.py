"""``calibrate(qmodel, batches)``: set every quantizer's range from statistics over many batches.

``quantize()`` calibrates on its one example input; a range taken from one small graph misses what other graphs of
the same distribution show (an isolated node, a hub), so deployments calibrate on a loader of representative
graphs. Each quantizer observes the FP32 value at its site (every quantizer passes its input through unchanged
while observing), accumulates what its spec's ``range_init`` needs (:mod:`mixq_compile.quant.observer`), and its
range is set once, after the last batch. Mixed quantizers set each candidate's range for its own bit-width.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .capture import InputSpec
from .errors import InputSignatureError
from .quantized_model import QuantizedModel


def calibrate(
    qmodel: QuantizedModel, batches: Iterable[Any], *, sites: Iterable[str] | None = None, progress: bool = True
) -> QuantizedModel:
    """Set the range (scale, zero-point) of every quantizer of ``qmodel`` from all of ``batches``.

    Args:
        qmodel: a model from :func:`~mixq_compile.quantize` (mixed) or :func:`~mixq_compile.freeze` (fixed).
        batches: an iterable of input tuples in the captured order (``(x, edge_index[, batch])``), of mappings
            from input names to tensors, or of PyG ``Data`` / ``Batch`` objects (``DataLoader``,
            ``NeighborLoader``), whose attributes are read by the names of the model's forward arguments (a
            ``batch`` the model takes but a single ``Data`` lacks is all zeros).
        sites: only these sites, given by name or by kind (e.g. ``["aggregate"]``); the others keep their ranges
            and quantize as usual during the pass. E.g. after training on sampled subgraphs, re-range the
            aggregation sums on the whole graph they will run on (a hub's sum is far above any sampled one).
        progress: show a tqdm progress bar.

    Runs in eval mode without gradients (the train/eval mode is restored). The ranges replace the previous ones,
    learned scales included, and come from these batches only. Returns ``qmodel``.

    Raises:
        ValueError: ``batches`` is empty.
        InputSignatureError: a batch does not match the captured inputs (names the batch and the mismatch).
    """
    quantizers = _selected(qmodel, sites)
    was_training = qmodel.training
    qmodel.eval()
    for _, quantizer in quantizers:
        quantizer.start_observing()
    seen = 0
    try:
        with torch.no_grad():
            for index, batch in enumerate(tqdm(batches, desc="calibrate", disable=not progress, leave=False)):
                args = batch_arguments(batch, qmodel.input_specs, index)
                try:
                    qmodel(*args)
                except InputSignatureError as error:
                    raise InputSignatureError(f"calibration batch {index}: {error}") from None
                seen += 1
        if seen == 0:
            raise ValueError("calibrate() got no batches: pass a non-empty iterable of inputs, e.g. a DataLoader")
    except BaseException:
        for _, quantizer in quantizers:  # a failed calibration leaves every range as it was
            quantizer.stop_observing()
        raise
    finally:
        qmodel.train(was_training)
    unseen = [name for name, quantizer in quantizers if not quantizer.finish_observing()]
    if unseen:
        raise RuntimeError(f"no calibration batch reached the sites {unseen}; their ranges were left unchanged")
    return qmodel


def _selected(qmodel: QuantizedModel, sites: Iterable[str] | None) -> list:
    everything = list(qmodel.quantizers())
    if sites is None:
        return everything
    wanted = set(sites)
    kinds = {s.name: s.kind for s in qmodel.plan.sites}
    unknown = wanted - set(kinds) - set(kinds.values())
    if unknown:
        raise ValueError(f"calibrate(sites=...) names no site or kind {sorted(unknown)}; sites: {sorted(kinds)}")
    return [(name, q) for name, q in everything if name in wanted or kinds[name] in wanted]


def batch_arguments(batch: Any, specs: tuple[InputSpec, ...], index: int) -> tuple[Tensor, ...]:
    """One calibration batch as the captured positional inputs (see :func:`calibrate` for the accepted forms)."""
    if isinstance(batch, Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)):
        return tuple(batch)
    names = [spec.name for spec in specs]
    if isinstance(batch, Mapping):
        missing = [name for name in names if name not in batch]
        if missing:
            raise InputSignatureError(
                f"calibration batch {index} has no {missing}; the model's inputs are {names}, the batch has "
                f"{sorted(map(str, batch))}"
            )
        return tuple(batch[name] for name in names)
    if hasattr(batch, "keys") and hasattr(batch, "num_nodes"):  # a PyG Data / Batch (duck-typed: no import)
        return tuple(_data_attribute(batch, name, names, index) for name in names)
    raise TypeError(
        f"calibration batch {index} is a {type(batch).__name__}; give input tuples, mappings of input names to "
        "tensors, or PyG Data/Batch objects"
    )


def _data_attribute(data: Any, name: str, names: list[str], index: int) -> Tensor:
    value = getattr(data, name, None)
    if value is None and name == "batch":
        return torch.zeros(data.num_nodes, dtype=torch.long, device=data.x.device if "x" in data else None)
    if not isinstance(value, Tensor):
        raise InputSignatureError(
            f"calibration batch {index} (a {type(data).__name__}) has no tensor attribute {name!r}; the model's "
            f"inputs are {names}, the batch has {sorted(data.keys())}"
        )
    return value
