import numpy as np
import pytest

from clipsae.analysis.features.top_images import top_images
from clipsae.errors import ClipsaeError


def _dense_values(codes, by):
    v = np.zeros((codes.n_images, codes.d_sae), np.float32)
    tok = np.zeros_like(v, dtype=np.int64)
    for b in codes.iter_images(by):
        v[b.image_of_E, b.latents_E] = b.values_E
        tok[b.image_of_E, b.latents_E] = b.tokens_E
    return v, tok


@pytest.mark.parametrize("by", ["max", "cls", "mean"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_equals_a_brute_force_sort(codes, by, k):
    v, tok = _dense_values(codes, by)
    top = top_images(codes, k, by)
    for f in range(codes.d_sae):
        order = sorted((i for i in range(codes.n_images) if v[i, f] > 0), key=lambda i: (-v[i, f], i))[:k]
        got = [int(i) for i in top.images_FK[f] if i >= 0]
        assert got == order
        np.testing.assert_array_equal(top.values_FK[f, :len(order)], v[order, f])
        np.testing.assert_array_equal(top.tokens_FK[f, :len(order)], tok[order, f])


def test_ties_go_to_the_smaller_image_index(codes, monkeypatch):
    from clipsae.store.codes import ImageValues

    blocks = [ImageValues(np.array([0, 1]), np.array([0, 1, 2]), np.array([3, 3]), np.array([2.0, 2.0], np.float32), np.array([0, 0])),
              ImageValues(np.array([2, 3]), np.array([0, 1, 2]), np.array([3, 3]), np.array([2.0, 5.0], np.float32), np.array([1, 0]))]
    monkeypatch.setattr(type(codes), "iter_images", lambda self, by="max": iter(blocks))
    top = top_images(codes, 3, "max")
    assert top.images_FK[3].tolist() == [3, 0, 1] and top.tokens_FK[3].tolist() == [0, 0, 0]


def test_k_below_one_is_refused(codes):
    with pytest.raises(ClipsaeError, match="-k must be at least 1"):
        top_images(codes, 0)
