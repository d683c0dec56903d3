"""``clipsae analyze search`` end to end on a real RN50 store: stored images, image files, texts, edits."""

import csv

import numpy as np
import pytest

from clipsae.analysis.features.search import search, vector_query
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore
from tests.analysis.helpers import sae_weights, saelens_dir


@pytest.fixture(scope="module")
def searchable(shards, tmp_path_factory):
    """RN50's attnpool (float32) over the shared tars, encoded by a TopK SAE as codes 'sae'; and the tars."""
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract

    tmp = tmp_path_factory.mktemp("search")
    store = tmp / "s.zarr"
    run_extract(ExtractConfig(ModelConfig("RN50"), ["attnpool"], str(shards), str(store), batch_size=6,
                              dtype="float32", progress=False))
    w = sae_weights(4, d=1024, n=64)
    run_encode(EncodeConfig(store, saelens_dir(tmp / "sae", {"architecture": "topk", "k": 6}, w), progress=False))
    return store


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _search(run_cli, store, out, *args):
    code, stdout, err = run_cli("analyze", "search", "--store", store, "--codes", "sae", "--out", out, "--device",
                                "cpu", *args)
    assert code == 0, err
    return stdout


def test_key_search_writes_the_hits_their_features_and_a_figure(searchable, run_cli, tmp_path):
    s = ActivationStore.open(searchable)
    key = str(s.keys()[5])
    out = _search(run_cli, searchable, tmp_path, "--key", key, "-k", "4")
    codes = Codes(s, "sae")
    ref = search(codes, vector_query(*codes.image_values(5), codes.d_sae, exclude=[5]), 4)
    rows = _rows(tmp_path / "search.csv")
    assert [int(r["image"]) for r in rows] == ref.images_K.tolist() and key not in [r["key"] for r in rows]
    assert [float(r["score"]) for r in rows] == pytest.approx(ref.scores_K.tolist(), rel=1e-5)
    contrib = _rows(tmp_path / "search_features.csv")
    assert {int(r["rank"]) for r in contrib} == {1, 2, 3, 4}
    assert (tmp_path / "search.png").read_bytes()[:4] == b"\x89PNG" and f"key {key}" in out


def test_an_image_file_is_its_stored_images_query(searchable, shards, run_cli, tmp_path):
    from clipsae.pipeline.tario import TarReport, iter_samples

    key, data, _ = next(iter_samples(str(sorted(shards.glob("*.tar"))[1]), None, TarReport()))
    image = tmp_path / f"{key}.jpg"
    image.write_bytes(data)
    _search(run_cli, searchable, tmp_path / "file", "--image", image, "-k", "5")
    _search(run_cli, searchable, tmp_path / "key", "--key", key, "-k", "5")
    by_file, by_key = _rows(tmp_path / "file" / "search.csv"), _rows(tmp_path / "key" / "search.csv")
    assert [r["image"] for r in by_file] == [r["image"] for r in by_key]  # the file is left out like the key
    assert [float(r["score"]) for r in by_file] == pytest.approx([float(r["score"]) for r in by_key], rel=1e-3)


def test_an_edit_removes_a_feature_from_the_query(searchable, run_cli, tmp_path):
    s = ActivationStore.open(searchable)
    codes = Codes(s, "sae")
    latents, values = codes.image_values(2)
    top = int(latents[np.argmax(values)])
    out = _search(run_cli, searchable, tmp_path, "--key", str(s.keys()[2]), "--edit", f"{top}:0", "-k", "6")
    kept = latents != top
    ref = search(codes, vector_query(latents[kept], values[kept], codes.d_sae, exclude=[2]), 6)
    assert [int(r["image"]) for r in _rows(tmp_path / "search.csv")] == ref.images_K.tolist()
    assert str(top) not in {r["feature"] for r in _rows(tmp_path / "search_features.csv")}
    assert f"edited: {top}:0" in out


def test_a_text_query_ranks_by_its_best_features(searchable, run_cli, tmp_path):
    out = _search(run_cli, searchable, tmp_path, "--text", "a red circle", "--text-features", "3", "-k", "5")
    assert "query: 'a red circle' → features" in out and "random weights" in out
    rows = _rows(tmp_path / "search.csv")
    assert 0 < len(rows) <= 5 and all(float(r["score"]) > 0 for r in rows)


def test_a_text_query_chooses_only_features_that_fired(searchable, run_cli, tmp_path):
    fired = Codes(ActivationStore.open(searchable), "sae").sums().latent_images_fired
    out = _search(run_cli, searchable, tmp_path, "--text", "a red car", "--text-features", "64", "-k", "5")
    line = next(x for x in out.splitlines() if x.startswith("query:"))
    chosen = [int(f.split(" (")[0]) for f in line.split("→ features ")[1].split(" (features that")[0].split(", ")]
    assert chosen and all(fired[f] > 0 for f in chosen) and (fired == 0).any()
    assert len(_rows(tmp_path / "search.csv")) > 0


def test_a_search_with_no_hit_removes_the_figure_of_an_earlier_one(searchable, run_cli, tmp_path):
    fired = Codes(ActivationStore.open(searchable), "sae").sums().latent_images_fired
    _search(run_cli, searchable, tmp_path, "--features", str(int(np.argmax(fired))), "-k", "3")
    assert (tmp_path / "search.png").exists()
    out = _search(run_cli, searchable, tmp_path, "--features", str(int(np.flatnonzero(fired == 0)[0])), "-k", "3")
    assert "no image has any of the query's features" in out
    assert _rows(tmp_path / "search.csv") == [] and not (tmp_path / "search.png").exists()


def test_features_query_needs_no_model(searchable, run_cli, tmp_path):
    _search(run_cli, searchable, tmp_path, "--features", "0,1,2,3,4,5:2", "-k", "3")
    assert len(_rows(tmp_path / "search.csv")) <= 3


@pytest.mark.parametrize("args, message", [
    ([], "give one query"),
    (["--key", "x", "--text", "y"], "not --key and --text"),
    (["--features", "1", "--edit", "1:0"], "use it with --key or --image"),
    (["--key", "nope"], "holds no image with key 'nope'"),
    (["--image", "missing.jpg"], "no such file"),
    (["--features", "1:x"], "has no number"),
])
def test_bad_queries_are_one_line(searchable, run_cli, tmp_path, args, message):
    code, _, err = run_cli("analyze", "search", "--store", searchable, "--codes", "sae", "--out", tmp_path, *args)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
