import itertools

import numpy as np
import pytest

from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.analysis.features.monosemanticity import embedding_hook, monosemanticity
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore
from tests.analysis.helpers import make_store, sae_weights, saelens_dir

EMBED_D = 6


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Codes of a TopK SAE on a 3-part store that also holds a pooled ``embed`` hook."""
    tmp = tmp_path_factory.mktemp("ms")
    store = make_store(tmp / "s.zarr", n_parts=3, per_part=9, embed_d=EMBED_D)
    run_encode(EncodeConfig(store, saelens_dir(tmp / "sae", {"architecture": "topk", "k": 3}, sae_weights(5)),
                            progress=False))
    return Codes(ActivationStore.open(store), "sae")


def _pairwise_reference(codes: Codes, by: str) -> np.ndarray:
    """The score as Pach et al. define it: a scaled by its maximum, then the double sum over image pairs."""
    v = np.zeros((codes.n_images, codes.d_sae))
    for b in codes.iter_images(by):
        v[b.image_of_E, b.latents_E] = b.values_E
    e = codes.store.read("embed", slice(None))[:, 0].astype(np.float64)
    cos = (e @ e.T) / np.outer(np.linalg.norm(e, axis=1), np.linalg.norm(e, axis=1))
    out = np.full(codes.d_sae, np.nan)
    for f in range(codes.d_sae):
        fired = np.nonzero(v[:, f] > 0)[0]
        if len(fired) < 2:
            continue
        a = v[:, f] / v[:, f].max()
        num = sum(a[n] * a[m] * cos[n, m] for n, m in itertools.combinations(fired, 2))
        den = sum(a[n] * a[m] for n, m in itertools.combinations(fired, 2))
        out[f] = num / den
    return out


@pytest.mark.parametrize("by", ["max", "mean"])
def test_score_equals_the_pairwise_definition(embedded, by):
    ref = _pairwise_reference(embedded, by)
    got = monosemanticity(embedded, "embed", by)
    np.testing.assert_allclose(got.ms_F, ref, rtol=1e-9, atol=1e-12)
    assert np.isnan(ref).sum() < embedded.d_sae  # the reference scored some features


def test_score_does_not_depend_on_how_the_stream_is_cut(embedded, monkeypatch):
    whole = monosemanticity(embedded, "embed", entries_per_step=1 << 20)
    iter_images = Codes.iter_images
    monkeypatch.setattr(Codes, "iter_images", lambda self, by="max": iter_images(self, by, max_entries=5))
    cut = monosemanticity(embedded, "embed", entries_per_step=3)
    np.testing.assert_allclose(cut.ms_F, whole.ms_F, rtol=1e-12)


def test_images_count_where_the_feature_fires_and_one_image_scores_nothing(embedded):
    v = np.zeros((embedded.n_images, embedded.d_sae))
    for b in embedded.iter_images("max"):
        v[b.image_of_E, b.latents_E] = b.values_E
    got = monosemanticity(embedded, "embed")
    np.testing.assert_array_equal(got.images_F, (v > 0).sum(0))
    assert np.isnan(got.ms_F[got.images_F < 2]).all() and not np.isnan(got.ms_F[got.images_F >= 2]).any()


def test_baseline_is_the_mean_cosine_of_all_image_pairs(embedded):
    e = embedded.store.read("embed", slice(None))[:, 0].astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    n = len(e)
    cos = e @ e.T
    expected = (cos.sum() - np.trace(cos)) / (n * (n - 1))
    assert monosemanticity(embedded, "embed").baseline == pytest.approx(expected, rel=1e-12)


def test_images_embedded_alike_score_one(tmp_path):
    from clipsae.store.writer import write_store
    from tests.analysis.helpers import GRID, N_TOKENS, D

    rng = np.random.default_rng(1)
    n = 12
    same = rng.standard_normal(EMBED_D) * rng.uniform(0.5, 2.0, (n, 1))  # one direction, many lengths
    write_store(tmp_path / "s.zarr", {"blocks.0": rng.standard_normal((n, N_TOKENS, D)).astype(np.float32),
                                      "embed": same.astype(np.float32)}, [f"i{i}" for i in range(n)],
                attrs={"model": "m"}, layouts={"blocks.0": {"cls_token": True, "grid": list(GRID)}})
    run_encode(EncodeConfig(tmp_path / "s.zarr", saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 3},
                                                             sae_weights(5)), progress=False))
    got = monosemanticity(Codes(ActivationStore.open(tmp_path / "s.zarr"), "sae"), "embed")
    scored = got.ms_F[~np.isnan(got.ms_F)]
    assert len(scored) > 3
    np.testing.assert_allclose(scored, 1.0, rtol=1e-6)
    assert got.baseline == pytest.approx(1.0, rel=1e-6)


def test_a_store_without_an_embed_hook_is_refused_in_one_line(codes):
    with pytest.raises(ClipsaeError, match="no 'embed' hook .* --embed-hook"):
        embedding_hook(codes.store, None)


def test_a_patch_only_hook_cannot_embed_images(tmp_path):
    from clipsae.store.writer import write_store

    rng = np.random.default_rng(0)
    write_store(tmp_path / "p.zarr", {"resid.3": rng.standard_normal((3, 4, 5))}, list("abc"), attrs={"model": "m"},
                dtype="float32", layouts={"resid.3": {"cls_token": False, "grid": [2, 2]}})
    with pytest.raises(ClipsaeError, match="4 tokens and no CLS token"):
        embedding_hook(ActivationStore.open(tmp_path / "p.zarr"), "resid.3")


def test_analyze_monosemanticity_writes_the_table(embedded, run_cli, tmp_path):
    code, out, err = run_cli("analyze", "monosemanticity", "--store", str(embedded.store.path), "--codes", "sae",
                             "--out", str(tmp_path))
    assert code == 0, err
    lines = (tmp_path / "monosemanticity.csv").read_text().splitlines()
    assert lines[0] == "feature,ms,images" and len(lines) == embedded.d_sae + 1
    ref = monosemanticity(embedded, "embed")
    f = int(np.nanargmax(ref.ms_F))
    feature, ms, images = lines[f + 1].split(",")
    assert int(feature) == f and float(ms) == pytest.approx(ref.ms_F[f], rel=1e-5) and int(images) == ref.images_F[f]
    assert "median" in out and (tmp_path / "monosemanticity.png").read_bytes()[:4] == b"\x89PNG"


def test_analyze_monosemanticity_without_embeddings_exits_with_one_line(codes, run_cli, tmp_path):
    code, out, err = run_cli("analyze", "monosemanticity", "--store", str(codes.store.path), "--codes", "sae",
                             "--out", str(tmp_path))
    assert code == 1 and "no 'embed' hook" in err and len(err.strip().splitlines()) == 1


def test_another_embed_hook_writes_its_own_file_beside_the_defaults(embedded, run_cli, tmp_path):
    args = ("analyze", "monosemanticity", "--store", str(embedded.store.path), "--codes", "sae", "--out", str(tmp_path))
    assert run_cli(*args)[0] == 0
    default = (tmp_path / "monosemanticity.csv").read_text()
    code, out, err = run_cli(*args, "--embed-hook", "blocks.0")
    assert code == 0, err
    assert (tmp_path / "monosemanticity.csv").read_text() == default
    other = (tmp_path / "monosemanticity_embed-blocks.0.csv").read_text()
    assert other != default and "monosemanticity_embed-blocks.0.png" in out
