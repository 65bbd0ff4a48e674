"""Data loaders: well-known statistics from the shared raw files, nothing written into the root, clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from mixq_compile.data import DatasetNotFoundError, load_dataset, stratified_folds

from helpers import data_root

ROOT = data_root()


def _load(name, tmp_path):
    if ROOT is None or not any((ROOT / sub).exists() for sub in ("Planetoid", "TUDataset", "CSL")):
        pytest.skip("no data root: set MIXQ_DATA to a folder with PyG raw files (../shared/datasets)")
    try:
        return load_dataset(name, ROOT, cache=tmp_path / "cache")
    except DatasetNotFoundError as error:
        pytest.skip(f"{name} is absent from the data root: {error}")


@pytest.mark.parametrize(
    ("name", "nodes", "edges", "features", "classes"),
    [("Cora", 2708, 10556, 1433, 7), ("CiteSeer", 3327, 9104, 3703, 6)],
)
def test_planetoid_statistics_and_row_normalised_features(name, nodes, edges, features, classes, tmp_path):
    loaded = _load(name, tmp_path)
    data = loaded.dataset[0]
    assert (data.num_nodes, data.num_edges, loaded.num_features, loaded.num_classes) == (
        nodes, edges, features, classes,
    )  # fmt: skip
    assert (int(data.train_mask.sum()), int(data.val_mask.sum()), int(data.test_mask.sum())) in (
        (140, 500, 1000), (120, 500, 1000),
    )  # fmt: skip
    sums = data.x.sum(1)
    assert torch.all(((sums - 1).abs() < 1e-5) | (sums == 0))


@pytest.mark.parametrize(
    ("name", "graphs"), [("MUTAG", 188), ("PROTEINS", 1113), ("IMDB-BINARY", 1000), ("imdb_multi", 1500)]
)
def test_tu_graph_counts_and_featureless_sets_get_degree_features(name, graphs, tmp_path):
    loaded = _load(name, tmp_path)
    assert len(loaded.dataset) == graphs and loaded.task == "graph"
    assert loaded.num_features > 1 and loaded.dataset[0].x is not None


def test_csl_graphs_features_and_splits(tmp_path):
    loaded = _load("CSL", tmp_path)
    graphs = loaded.dataset
    assert len(graphs) == 150 and loaded.num_classes == 10
    assert all(g.num_nodes == 41 and g.x.shape == (41, 50) for g in graphs)
    assert sorted(int(g.y) for g in graphs) == sorted(list(range(10)) * 15)
    assert len(loaded.splits) == 5
    tests = torch.cat([s["test"] for s in loaded.splits])
    assert sorted(tests.tolist()) == list(range(150))
    assert all((len(s["train"]), len(s["val"]), len(s["test"])) == (90, 30, 30) for s in loaded.splits)


def test_the_data_root_is_never_written(tmp_path):
    if ROOT is None or not (ROOT / "TUDataset" / "MUTAG").is_dir():
        pytest.skip("MUTAG raw files are absent")
    root = tmp_path / "root"
    shutil.copytree(ROOT / "TUDataset" / "MUTAG", root / "TUDataset" / "MUTAG")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert len(load_dataset("MUTAG", root, cache=tmp_path / "cache").dataset) == 188
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert (tmp_path / "cache" / "TUDataset" / "MUTAG" / "processed").is_dir()


def test_unknown_name_and_missing_data_set_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="known data sets"):
        load_dataset("NotADataset", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"Planetoid/Cora/raw") as info:
        load_dataset("Cora", tmp_path / "empty", cache=tmp_path / "cache")
    assert "MIXQ_DATA" in str(info.value)


def test_stratified_folds_are_disjoint_cover_everything_and_keep_class_proportions():
    labels = np.array([0] * 60 + [1] * 40)
    folds = stratified_folds(labels, n_folds=10, seed=42)
    for train, val, test in folds:
        assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
        assert sorted([*train, *val, *test]) == list(range(100))
        assert (labels[test] == 1).sum() == 4
    assert stratified_folds(labels, 10, 42)[3][2].tolist() == folds[3][2].tolist()


@pytest.mark.parametrize("name", ["ogbn-arxiv", "ogbn-products"])
def test_ogb_data_sets_name_the_files_they_need_and_never_write_into_the_root(name, tmp_path):
    from mixq_compile.data import ogb_files

    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"missing .*raw/edge\.csv\.gz.*split/"):
        load_dataset(name, root, cache=tmp_path / "cache")
    for file in ogb_files(name):  # every expected file present (empty stand-ins): the check passes
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).write_bytes(b"")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    try:
        import ogb  # noqa: F401
    except ImportError:
        with pytest.raises(DatasetNotFoundError, match="needs the `ogb` package"):
            load_dataset(name, root, cache=tmp_path / "cache")
    else:
        with pytest.raises(Exception):  # noqa: B017 (ogb fails on the empty stand-ins, in the cache copy)
            load_dataset(name, root, cache=tmp_path / "cache")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, "nothing written into the data root"
    assert (tmp_path / "cache" / ogb_files(name)[0]).is_file(), "the files were staged into the cache"
