"""Sparse probing: a planted class feature is found at k = 1 and predicts its class; noise stays at chance;
the feature choice and the split are the documented ones."""

import csv
import json

import numpy as np
import pytest
import torch

from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.analysis.evaluation.sparse_probe import (
    Task,
    in_test_split,
    key_hashes,
    mean_differences,
    plan,
    sparse_probe,
    tasks_of,
    top_features,
)
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore
from clipsae.store.writer import write_store
from tests.analysis.helpers import saelens_dir

D, N_IMAGES, N_CLASSES, PLANTED_CLASS = 8, 600, 4, 2


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """600 images of CLS + 2 patches, 4 classes; dimension 0 is 5 on every token of class 2's images and 0
    elsewhere, the rest noise. An identity ReLU SAE codes each dimension as its own feature."""
    tmp = tmp_path_factory.mktemp("sparse_probe")
    rng = np.random.default_rng(0)
    labels = np.arange(N_IMAGES) % N_CLASSES
    acts = rng.uniform(0, 1, (N_IMAGES, 3, D)).astype(np.float32)
    acts[:, :, 0] = 5.0 * (labels == PLANTED_CLASS)[:, None]
    store = tmp / "s.zarr"
    write_store(store, {"blocks.0": acts}, [f"img{i:05d}" for i in range(N_IMAGES)], labels=labels.tolist(),
                attrs={"model": "test"}, dtype="float32", layouts={"blocks.0": {"cls_token": True, "grid": [1, 2]}})
    eye = torch.eye(D)
    sae = saelens_dir(tmp / "sae", {"architecture": "standard"},
                      {"W_enc": eye.clone(), "b_enc": torch.zeros(D), "W_dec": eye.clone(), "b_dec": torch.zeros(D)})
    run_encode(EncodeConfig(store, sae, progress=False))
    return store


def test_the_split_is_by_key_alone_and_about_a_fifth():
    keys = [f"k{i}" for i in range(5000)]
    split = in_test_split(keys)
    assert split.tolist() == in_test_split(list(reversed(keys)))[::-1].tolist()  # each key decides for itself
    assert 0.18 < split.mean() < 0.22


def test_the_planted_feature_is_chosen_at_k_1_and_predicts_its_class(planted):
    codes = Codes(ActivationStore.open(planted), "sae")
    res = sparse_probe(codes, tasks_of(codes.store.labels(), {}), ks=(1, 2))
    row = next(r for r in res.rows if r[0] == f"class={PLANTED_CLASS}" and r[1] == 1)
    assert row[2] == "0" and row[3] >= 0.95 and row[4] >= 0.95
    assert {r[0] for r in res.rows} == {f"class={c}" for c in range(N_CLASSES)}


def test_a_task_of_noise_stays_near_chance(planted):
    codes = Codes(ActivationStore.open(planted), "sae")
    noise = np.random.default_rng(1).random(N_IMAGES) < 0.5
    res = sparse_probe(codes, [Task("noise", noise, np.ones(N_IMAGES, bool))], ks=(1, 5))
    assert all(0.35 <= r[3] <= 0.65 for r in res.rows), res.rows


def test_the_mean_differences_equal_a_dense_reference(planted):
    codes = Codes(ActivationStore.open(planted), "sae")
    tasks = tasks_of(codes.store.labels(), {})
    p = plan(tasks, codes.store.keys())
    dense_IF = np.zeros((codes.n_images, codes.d_sae))
    for b in codes.iter_images("max"):
        dense_IF[b.image_of_E, b.latents_E] = b.values_E
    diff = mean_differences(codes, p, "max")
    for t, sides in enumerate(p.train):
        want = dense_IF[sides.positives].mean(0) - dense_IF[sides.negatives].mean(0)
        np.testing.assert_allclose(diff[t], want, rtol=1e-6, atol=1e-9)
        assert len(sides.positives) == len(sides.negatives)  # balanced
    assert top_features(np.array([[0.5, -2.0, 2.0, 0.1]]), 2).tolist() == [[1, 2]]  # |d|, ties to the smaller


def test_balancing_keeps_the_smaller_side_whole_and_cuts_the_other_by_key_hash():
    keys = [f"k{i}" for i in range(200)]
    positive = np.zeros(200, bool)
    positive[:30] = True
    p = plan([Task("t", positive, np.ones(200, bool))], keys)
    rank = key_hashes(keys)
    train = p.train[0]
    assert set(train.positives) == set(np.flatnonzero(positive & (rank >= 0.2)))
    negatives = np.flatnonzero(~positive & (rank >= 0.2))
    assert set(train.negatives) == set(negatives[np.argsort(rank[negatives])[:len(train.positives)]])


def test_analyze_sparse_probe_writes_its_table_and_summary(planted, run_cli, tmp_path):
    attrs = tmp_path / "attrs.csv"
    rng = np.random.default_rng(2)
    attrs.write_text("key,planted,noise\n" + "".join(f"img{i:05d},{int(i % N_CLASSES == PLANTED_CLASS)},{int(rng.random() < .5)}\n"
                                                    for i in range(N_IMAGES)))
    code, out, err = run_cli("analyze", "sparse-probe", "--store", planted, "--codes", "sae", "--out", tmp_path,
                             "--attributes", attrs, "--quiet")
    assert code == 0, err
    with open(tmp_path / "sparse_probe.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["task", "k", "features", "accuracy", "dense_accuracy", "train_images", "test_images"]
    assert {r["task"] for r in rows} == {"class=0", "class=1", "class=2", "class=3", "planted", "noise"}
    planted_row = next(r for r in rows if r["task"] == "planted" and r["k"] == "1")
    assert planted_row["features"] == "0" and float(planted_row["accuracy"]) >= 0.95
    summary = json.loads((tmp_path / "sparse_probe.json").read_text())
    assert set(summary["accuracy"]) == {"1", "2", "5"} and summary["tasks"] == 6
    assert "sparse probing of 6 tasks by max" in out


@pytest.mark.parametrize("args, message", [(["--k", "0"], "--k must name feature counts from 1 to 8"),
                                           (["--k", "a"], "--k must be comma-separated integers")])
def test_bad_k_is_one_line(planted, run_cli, tmp_path, args, message):
    code, _, err = run_cli("analyze", "sparse-probe", "--store", planted, "--codes", "sae", "--out", tmp_path, *args)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_a_store_without_labels_or_attributes_has_no_task(planted):
    codes = Codes(ActivationStore.open(planted), "sae")
    with pytest.raises(ClipsaeError, match="no task has enough images"):
        sparse_probe(codes, [], ks=(1,))
