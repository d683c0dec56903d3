import math

import numpy as np
import pytest

from clipsae.analysis.features.label_entropy import label_entropy
from clipsae.analysis.features.top_images import TopImages


def test_entropy_equals_a_hand_computation():
    # Feature 0: images 0,1,2 (labels 0,0,1) with values 3,1,4; image 3 is unlabelled and ignored.
    top = TopImages(np.array([[0, 1, 2, 3], [4, -1, -1, -1]]), np.array([[3.0, 1.0, 4.0, 9.0], [2.0, 0, 0, 0]]),
                    np.zeros((2, 4), int))
    labels = np.array([0, 0, 1, -1, 2])
    e = label_entropy(top, labels, min_hits=3)
    p = np.array([4 / 8, 4 / 8])
    assert e.entropy_F[0] == pytest.approx(-(p * np.log(p)).sum())
    assert e.entropy_norm_F[0] == pytest.approx(math.log(2) / math.log(3))
    assert e.n_F.tolist() == [3, 1] and e.n_labels == 3
    assert np.isnan(e.entropy_F[1]) and e.top_label_F[1] == 2 and e.top_label_share_F[1] == 1.0
    assert e.top_label_F[0] == 0 and e.top_label_share_F[0] == pytest.approx(0.5)  # ties: the smaller label


def test_single_label_feature_has_zero_entropy():
    top = TopImages(np.array([[0, 1]]), np.array([[1.0, 2.0]]), np.zeros((1, 2), int))
    e = label_entropy(top, np.array([5, 5, 6]), min_hits=2)
    assert e.entropy_F[0] == 0.0 and e.top_label_F[0] == 5


def test_label_entropy_equals_a_plain_loop_over_each_features_images():
    rng = np.random.default_rng(3)
    n_f, k, n_img = 200, 20, 500
    images = rng.integers(-1, n_img, (n_f, k))
    values = np.where(images >= 0, rng.integers(1, 4, (n_f, k)).astype(float), 0.0)  # integers: ties happen
    labels = rng.integers(-1, 30, n_img)
    e = label_entropy(TopImages(images, values, np.zeros((n_f, k), int)), labels, min_hits=5)
    for f in range(n_f):
        mass = {}
        for img, v in zip(images[f], values[f]):
            if img >= 0 and labels[img] >= 0 and v > 0:
                mass[int(labels[img])] = mass.get(int(labels[img]), 0.0) + v
        n = sum(1 for img, v in zip(images[f], values[f]) if img >= 0 and labels[img] >= 0 and v > 0)
        assert e.n_F[f] == n
        if not mass:
            assert e.top_label_F[f] == -1 and np.isnan(e.top_label_share_F[f])
            continue
        total = sum(mass.values())
        h = -sum(m / total * math.log(m / total) for m in mass.values())
        assert (np.isnan(e.entropy_F[f]) if n < 5 else e.entropy_F[f] == pytest.approx(h))
        best = min(mass, key=lambda lab: (-mass[lab], lab))
        assert e.top_label_F[f] == best and e.top_label_share_F[f] == pytest.approx(mass[best] / total)
