"""Data sets of the paper, loaded with PyG from a read-only data root without writing into it.

Root resolution: the ``root`` argument, else ``$MIXQ_DATA``, else PyG's normal download into the cache. The root
uses PyG's raw layout (``Planetoid/<Name>/raw``, ``TUDataset/<NAME>/raw``, ``CSL/raw``); the needed raw folder is
copied into a writable cache (``$MIXQ_CACHE``, default ``~/.cache/mixq_compile/data``) before PyG processes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import MixQError

PLANETOID = ("Cora", "CiteSeer", "PubMed")
TU = ("MUTAG", "PROTEINS", "IMDB-BINARY", "IMDB-MULTI", "DD", "REDDIT-BINARY", "REDDIT-MULTI-5K")
#: OGB node data sets: name -> the split folder its zip ships
OGB = {"ogbn-arxiv": "time", "ogbn-products": "sales_ranking"}
KNOWN = (*PLANETOID, *TU, "CSL", *OGB)
CSL_PE_DIM = 50


class DatasetNotFoundError(MixQError, FileNotFoundError):
    """A data set's raw files are not where they were looked for."""


@dataclass(frozen=True)
class LoadedDataset:
    name: str
    task: str  # "node" or "graph"
    dataset: object
    num_features: int
    num_classes: int
    splits: list[dict[str, torch.Tensor]] | None = None


def canonical_name(name: str) -> str:
    key = name.replace("_", "-").lower()
    for known in KNOWN:
        if known.lower() == key:
            return known
    raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(KNOWN)}")


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    base = explicit or os.environ.get("MIXQ_CACHE") or Path.home() / ".cache" / "mixq_compile" / "data"
    return Path(base)


def _raw_relpath(name: str) -> Path:
    if name in OGB:
        return Path(name.replace("-", "_"))  # ogb keeps raw/, split/ and processed/ in one folder
    if name in PLANETOID:
        return Path("Planetoid") / name / "raw"
    if name == "CSL":
        return Path("CSL") / "raw"
    return Path("TUDataset") / name / "raw"


def _same_files(a: Path, b: Path) -> bool:
    def listing(p: Path) -> dict[str, int]:
        return {f.name: f.stat().st_size for f in p.iterdir() if f.is_file()}

    return b.is_dir() and listing(a) == listing(b)


def _stage(root: Path, name: str, cache: Path, origin: str) -> Path:
    """Copy the raw folder of ``name`` from ``root`` into ``cache`` (atomically) and return the cache root."""
    rel = _raw_relpath(name)
    source = root / rel
    if not source.is_dir() or not any(source.iterdir()):
        raise DatasetNotFoundError(
            f"data set {name} not found: looked for its raw files in {source} (data root {root}, from {origin}). "
            f"Place PyG's raw files there (layout {rel}), or point MIXQ_DATA / --data-root at a folder that has them"
        )
    target = cache / rel
    if not _same_files(source, target):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".raw.", dir=target.parent))
        shutil.copytree(source, staging, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target.parent / "processed", ignore_errors=True)
            shutil.rmtree(target)
        os.replace(staging, target)
    return cache


def _resolve(root: str | os.PathLike | None) -> tuple[Path | None, str]:
    if root is not None:
        return Path(root), "the root argument"
    env = os.environ.get("MIXQ_DATA")
    if env:
        return Path(env), "MIXQ_DATA"
    return None, "PyG download"


def stratified_folds(labels, n_folds: int = 10, seed: int = 42) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """MixQ's CV protocol: class-stratified shuffled folds; fold i tests on fold i, validates on fold i-1."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(n_folds)]
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        for j, idx in enumerate(members):
            folds[(offset + j) % n_folds].append(int(idx))
        offset += len(members)
    out = []
    for i in range(n_folds):
        test, val = np.array(sorted(folds[i])), np.array(sorted(folds[i - 1]))
        train = np.array(sorted(k for f in range(n_folds) if f not in (i, (i - 1) % n_folds) for k in folds[f]))
        out.append((train, val, test))
    return out


def laplacian_pe(edge_index: torch.Tensor, num_nodes: int, dim: int = CSL_PE_DIM) -> torch.Tensor:
    """Eigenvectors 2..dim+1 of the symmetric normalised Laplacian (dense ``eigh``; sign/basis not fixed, as in the
    reference, whose degenerate circulant eigenpairs make the encoding labelling-dependent)."""
    adj = np.zeros((num_nodes, num_nodes))
    adj[edge_index[0].numpy(), edge_index[1].numpy()] = 1.0
    np.fill_diagonal(adj, 0.0)
    deg = adj.sum(1)
    inv_sqrt = np.where(deg > 0, deg**-0.5, 0.0)
    lap = np.eye(num_nodes) - inv_sqrt[:, None] * adj * inv_sqrt[None, :]
    _, vectors = np.linalg.eigh(lap)
    pe = vectors[:, 1 : dim + 1]
    if pe.shape[1] < dim:
        pe = np.pad(pe, ((0, 0), (0, dim - pe.shape[1])))
    return torch.tensor(pe, dtype=torch.float32)


def _csl_splits(raw: Path) -> list[dict[str, torch.Tensor]]:
    parts = {}
    for split in ("train", "val", "test"):
        lines = (raw / f"CSL_{split}.index").read_text().split("\n")
        parts[split] = [torch.tensor([int(v) for v in line.split(",")]) for line in lines if line.strip()]
    return [{k: parts[k][i] for k in parts} for i in range(len(parts["test"]))]


def _tu_transform(dataset):
    from torch_geometric.transforms import OneHotDegree
    from torch_geometric.utils import degree

    max_degree = max(int(degree(d.edge_index[0], d.num_nodes).max()) if d.num_edges else 0 for d in dataset)
    if max_degree < 1000:
        return OneHotDegree(max_degree)

    def standardised_degree(data):
        deg = degree(data.edge_index[0], data.num_nodes).unsqueeze(1)
        data.x = (deg - deg.mean()) / deg.std().clamp_min(1e-6)
        return data

    return standardised_degree


def load_dataset(name: str, root: str | os.PathLike | None = None, *, cache=None) -> LoadedDataset:
    """Load one of :data:`KNOWN` (case-insensitive) — see the module docstring for where files come from."""
    name = canonical_name(name)
    base, origin = _resolve(root)
    cache_root = cache_dir(cache)
    if name in OGB:
        return _load_ogb(name, base, origin, cache_root)
    if base is not None:
        work = _stage(base, name, cache_root, origin)
    else:
        work = cache_root
    try:
        if name in PLANETOID:
            from torch_geometric.datasets import Planetoid
            from torch_geometric.transforms import NormalizeFeatures

            dataset = Planetoid(str(work / "Planetoid"), name, transform=NormalizeFeatures())
            return LoadedDataset(name, "node", dataset, dataset.num_features, dataset.num_classes)
        if name == "CSL":
            from torch_geometric.datasets import GNNBenchmarkDataset

            dataset = GNNBenchmarkDataset(str(work), "CSL")
            graphs = []
            for data in dataset:
                data.x = laplacian_pe(data.edge_index, data.num_nodes)
                graphs.append(data)
            return LoadedDataset(name, "graph", graphs, CSL_PE_DIM, 10, _csl_splits(work / "CSL" / "raw"))
        from torch_geometric.datasets import TUDataset

        dataset = TUDataset(str(work / "TUDataset"), name)
        if dataset.num_features == 0:
            dataset = TUDataset(str(work / "TUDataset"), name, transform=_tu_transform(dataset))
        return LoadedDataset(name, "graph", dataset, dataset.num_features, dataset.num_classes)
    except (OSError, RuntimeError) as error:
        if base is not None:
            raise
        raise DatasetNotFoundError(
            f"could not download {name} ({error}); set MIXQ_DATA or pass --data-root to a folder with PyG's raw files"
        ) from error


def ogb_files(name: str) -> list[Path]:
    """The files of an OGB node data set that must be under the data root (as its zip unpacks)."""
    folder = _raw_relpath(name)
    raw = [folder / "raw" / f for f in ("edge.csv.gz", "node-feat.csv.gz", "node-label.csv.gz")]
    return [folder / "RELEASE_v1.txt", *raw, *(folder / "split" / OGB[name] / f"{p}.csv.gz" for p in
            ("train", "valid", "test"))]  # fmt: skip


def _load_ogb(name: str, base: Path | None, origin: str, cache_root: Path) -> LoadedDataset:
    """An OGB data set through ``ogb``: copied from the data root into the cache first (ogb writes
    ``processed/`` next to ``raw/``), or downloaded by ogb into the cache when no root is set."""
    if base is not None:
        missing = [str(f) for f in ogb_files(name) if not (base / f).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"data set {name} not found in {base} (from {origin}): missing {', '.join(missing)}. Unpack ogb's "
                f"{_raw_relpath(name)}.zip there, or point MIXQ_DATA / --data-root at a folder that has it"
            )
        _stage(base, name, cache_root, origin)
    try:
        from ogb.nodeproppred import PygNodePropPredDataset
    except ImportError as error:
        raise DatasetNotFoundError(f"{name} needs the `ogb` package: pip install ogb") from error
    dataset = PygNodePropPredDataset(name, root=str(cache_root))
    return LoadedDataset(name, "node", dataset, dataset.num_features, dataset.num_classes)


#: Skip lengths of the 10 CSL classes (Murphy et al. 2019), on cycles of 41 nodes.
CSL_SKIPS = (2, 3, 4, 5, 6, 9, 11, 12, 13, 16)


def generate_csl(graphs_per_class: int = 15, nodes: int = 41, seed: int = 0) -> LoadedDataset:
    """Circular Skip Link graphs generated in memory (no files needed): class c is a 41-cycle plus chords of length
    ``CSL_SKIPS[c]``, node order randomly permuted; 50-dim Laplacian PE features; 5 stratified splits (3:1:1)."""
    from torch_geometric.data import Data

    gen = torch.Generator().manual_seed(seed)
    graphs = []
    ring = torch.arange(nodes)
    for label, skip in enumerate(CSL_SKIPS):
        for _ in range(graphs_per_class):
            perm = torch.randperm(nodes, generator=gen)
            src = torch.cat([ring, ring])
            dst = torch.cat([(ring + 1) % nodes, (ring + skip) % nodes])
            edge_index = perm[torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])]
            graphs.append(Data(x=laplacian_pe(edge_index, nodes), edge_index=edge_index, y=torch.tensor([label])))
    labels = [int(g.y) for g in graphs]
    splits = []
    for train, val, test in stratified_folds(labels, n_folds=5, seed=seed)[:5]:
        splits.append({"train": torch.as_tensor(train), "val": torch.as_tensor(val), "test": torch.as_tensor(test)})
    return LoadedDataset("CSL (generated)", "graph", graphs, CSL_PE_DIM, len(CSL_SKIPS), splits)
