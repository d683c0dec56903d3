import numpy as np
import pytest

from clipsae.analysis.features.interval_samples import interval_of, interval_samples, priority
from clipsae.analysis.features.top_images import StreamingTopK, top_images


def dense_values(codes):
    """(images, features) per-image max values, from the streamed CSR blocks."""
    v = np.zeros((codes.n_images, codes.d_sae), dtype=np.float32)
    for b in codes.iter_images("max"):
        v[b.image_of_E, b.latents_E] = b.values_E
    return v


def test_streaming_topk_equals_a_full_sort_whatever_the_blocks():
    rng = np.random.default_rng(0)
    n, groups, k = 500, 7, 5
    group, score = rng.integers(0, groups, n), rng.integers(0, 20, n).astype(np.float32)
    image = np.arange(n)
    want = [sorted(np.nonzero(group == g)[0], key=lambda i: (-score[i], i))[:k] for g in range(groups)]
    for cut in (1, 13, n):
        top = StreamingTopK(groups, k)
        for s in range(0, n, cut):
            top.update(group[s:s + cut], score[s:s + cut], image[s:s + cut], image[s:s + cut] * 10)
        for g in range(groups):
            got = [int(i) for i in top.images[g] if i >= 0]
            assert got == want[g]
            assert (top.tokens[g][:len(got)] == np.array(got) * 10).all()


def test_interval_of_puts_each_value_in_its_equal_width_interval():
    m = np.full(6, 4.0)
    assert interval_of(np.array([0.1, 1.0, 1.01, 2.0, 3.5, 4.0]), m, 4).tolist() == [0, 0, 1, 1, 3, 3]


def test_priority_is_deterministic_and_spread_over_the_unit_interval():
    f, i = np.repeat(np.arange(50), 200), np.tile(np.arange(200), 50)
    p = priority(f, i, 0)
    assert np.array_equal(p, priority(f, i, 0)) and not np.array_equal(p, priority(f, i, 1))
    assert 0 <= p.min() and p.max() < 1 and abs(p.mean() - 0.5) < 0.02


@pytest.mark.parametrize("per", [1, 3])
def test_samples_are_the_highest_priority_images_of_each_interval_outside_the_top(codes, per):
    values = dense_values(codes)
    top = top_images(codes, 3)
    got = interval_samples(codes, top, per, n_intervals=3, seed=5)
    for f in range(codes.d_sae):
        m = values[:, f].max()
        for q in range(3):
            lo, hi = m * q / 3, m * (q + 1) / 3
            cand = [i for i in np.nonzero(values[:, f] > 0)[0]
                    if interval_of(values[i:i + 1, f], np.array([m]), 3)[0] == q and i not in top.images_FK[f]]
            pri = priority(np.full(len(cand), f), np.array(cand, dtype=np.int64), 5)
            chosen = [cand[j] for j in sorted(range(len(cand)), key=lambda j: (-pri[j], cand[j]))[:per]]
            chosen = sorted(chosen, key=lambda i: (-values[i, f], i))
            imgs = got.images_FQS[f, q]
            assert [int(i) for i in imgs if i >= 0] == chosen
            shown = got.values_FQS[f, q][imgs >= 0]
            assert np.allclose(shown, values[chosen, f])
            assert ((shown > lo - 1e-6) & (shown <= hi + 1e-6)).all()
