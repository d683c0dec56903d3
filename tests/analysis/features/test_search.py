import numpy as np
import pytest

from clipsae.analysis.edits import apply_edits, parse_edits, parse_weighted
from clipsae.analysis.features.search import Query, search, vector_query, weights_query
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes


def _dense(codes, by):
    v = np.zeros((codes.n_images, codes.d_sae))
    for b in codes.iter_images(by):
        v[b.image_of_E, b.latents_E] = b.values_E
    return v


def _brute_force(v, q, cosine, k, exclude=()):
    terms = v * q
    score = terms.sum(1)
    if cosine:
        norm = np.linalg.norm(v, axis=1) * np.linalg.norm(q)
        score = np.divide(score, norm, out=np.zeros_like(score), where=norm > 0)
    ok = (terms != 0).any(1)
    ok[list(exclude)] = False
    images = np.nonzero(ok)[0]
    order = np.lexsort((images, -score[images]))[:k]
    return images[order], score[images[order]]


@pytest.mark.parametrize("by", ["max", "mean", "cls"])
@pytest.mark.parametrize("k", [1, 5, 100])
def test_weighted_features_equal_brute_force(codes, by, k):
    v = _dense(codes, by)
    w = {3: 1.0, 7: 2.5, 11: -0.5}
    hits = search(codes, weights_query(w, codes.d_sae), k, by)
    q = np.zeros(codes.d_sae)
    q[list(w)] = list(w.values())
    images, scores = _brute_force(v, q, False, k)
    assert hits.images_K.tolist() == images.tolist()
    np.testing.assert_allclose(hits.scores_K, scores, rtol=1e-12)


@pytest.mark.parametrize("by", ["max", "mean"])
def test_query_image_cosine_equals_brute_force_and_excludes_the_query(codes, by):
    v = _dense(codes, by)
    latents, values = codes.image_values(17, by)
    np.testing.assert_array_equal(np.nonzero(v[17])[0], latents)
    hits = search(codes, vector_query(latents, values, codes.d_sae, exclude=[17]), 10, by)
    images, scores = _brute_force(v, v[17], True, 10, exclude=[17])
    assert 17 not in hits.images_K and hits.images_K.tolist() == images.tolist()
    np.testing.assert_allclose(hits.scores_K, scores, rtol=1e-9)


def test_contributions_are_the_terms_of_each_hits_score(codes):
    v = _dense(codes, "max")
    latents, values = codes.image_values(4, "max")
    hits = search(codes, vector_query(latents, values, codes.d_sae, exclude=[4]), 6)
    for img, score, (feats, terms) in zip(hits.images_K, hits.scores_K, hits.contributions):
        assert terms.sum() == pytest.approx(score, rel=1e-9)
        assert (np.diff(terms) <= 0).all() and set(feats) == set(np.nonzero(v[img] * v[4])[0])


def test_the_result_does_not_depend_on_how_the_stream_is_cut(codes, monkeypatch):
    w = weights_query({1: 1.0, 2: 1.0, 5: 3.0}, codes.d_sae)
    whole = search(codes, w, 12)
    iter_images = Codes.iter_images
    monkeypatch.setattr(Codes, "iter_images", lambda self, by="max": iter_images(self, by, max_entries=7))
    cut = search(codes, w, 12)
    assert cut.images_K.tolist() == whole.images_K.tolist()
    np.testing.assert_allclose(cut.scores_K, whole.scores_K, rtol=1e-12)


def test_an_empty_query_is_refused():
    with pytest.raises(ClipsaeError, match="no active feature"):
        Query(np.zeros(4), cosine=True)


@pytest.mark.parametrize("text, message", [
    ("12:x", "has no number"), ("a:1", "does not start with a feature index"), ("99:0", "out of range"),
    ("3", "is not FEATURE:VALUE"), ("3:0,3:x2", "names feature 3 twice"), ("3=inf", "not a finite number"),
    ("3:x-1", "'3:x-1' is negative, but this SAE's codes never are"), ("3=-2", "'3=-2' is negative"),
])
def test_malformed_edits_are_one_line(text, message):
    with pytest.raises(ClipsaeError, match=message):
        parse_edits(text, 24)


def test_signed_codes_take_negative_edits():
    assert [e.value for e in parse_edits("3:x-1,4=-2", 24, signed=True)] == [-1.0, -2.0]


@pytest.mark.parametrize("text", ["2682:-1", "5:0"])
def test_a_weight_that_is_not_positive_is_refused(text):
    with pytest.raises(ClipsaeError, match="a feature's weight must be positive"):
        parse_weighted(text, 4000)


def test_edits_set_scale_and_clamp():
    import torch

    z = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
    out = apply_edits(z, parse_edits("0:0,1:x3,2=5", 3))
    assert out.tolist() == [[0.0, 6.0, 5.0], [0.0, 0.0, 5.0]]
    where = torch.tensor([True, False])
    assert apply_edits(z, parse_edits("0:0", 3), where).tolist() == [[0.0, 2.0, 0.0], [3.0, 0.0, 4.0]]


def test_weighted_lists_default_to_one():
    assert parse_weighted("12,625:2.0", 1000) == {12: 1.0, 625: 2.0}
    with pytest.raises(ClipsaeError, match="out of range"):
        parse_weighted("1000", 1000)
