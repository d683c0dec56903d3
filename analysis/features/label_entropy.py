"""Fry's label entropy of a feature's top images: how many classes a feature's best images span.

Over a feature's top-k images that have a label (≥ 0): p_c = Σ value of those with label c / Σ value,
H = −Σ p_c ln p_c (nats), normalised by ln C with C the number of distinct labels in the store.
"""

from dataclasses import dataclass

import numpy as np

from clipsae.analysis.features.top_images import TopImages
from clipsae.errors import ClipsaeError

DEFAULT_MIN_HITS = 10


@dataclass(frozen=True)
class LabelEntropy:
    """Per feature: entropy (nan when fewer than ``min_hits`` labelled images), its normalised form,
    the number of labelled top images, the label with the most value and its share."""

    entropy_F: np.ndarray
    entropy_norm_F: np.ndarray
    n_F: np.ndarray
    top_label_F: np.ndarray
    top_label_share_F: np.ndarray
    n_labels: int


def check_min_hits(min_hits: int) -> None:
    """Refuse a --min-hits below 1, before any pass over the codes."""
    if min_hits < 1:
        raise ClipsaeError(f"--min-hits must be at least 1, not {min_hits}")


def label_entropy(top: TopImages, labels: np.ndarray, min_hits: int = DEFAULT_MIN_HITS) -> LabelEntropy:
    """Label entropy of every feature's top images; ``labels`` are the store's, −1 for none."""
    check_min_hits(min_hits)
    n_features = top.images_FK.shape[0]
    distinct = np.unique(labels[labels >= 0])
    img_lab = np.where(top.images_FK >= 0, labels[np.maximum(top.images_FK, 0)], -1)
    use = (top.images_FK >= 0) & (img_lab >= 0) & (top.values_FK > 0)
    n_F = use.sum(1)
    rows, cols = np.nonzero(use)
    # Value per (feature, label) pair present: at most k pairs a feature, never a (features × labels) matrix,
    # which at 65,536 features and 1,000 classes would be 0.5 GB a copy.
    n_labels = max(len(distinct), 1)
    key = rows.astype(np.int64) * n_labels + np.searchsorted(distinct, img_lab[rows, cols])
    pairs, inverse = np.unique(key, return_inverse=True)
    mass_P = np.bincount(inverse, weights=top.values_FK[rows, cols].astype(np.float64), minlength=len(pairs))
    feat_P, lab_P = pairs // n_labels, pairs % n_labels
    total_F = np.bincount(feat_P, weights=mass_P, minlength=n_features)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_P = mass_P / total_F[feat_P]
        h = -np.bincount(feat_P, weights=np.where(p_P > 0, p_P * np.log(np.where(p_P > 0, p_P, 1.0)), 0.0),
                         minlength=n_features)
    entropy = np.where(n_F >= min_hits, h, np.nan)
    norm = entropy / np.log(len(distinct)) if len(distinct) > 1 else np.full(n_features, np.nan)
    # Each feature's label of most value; ties go to the smaller label.
    order = np.lexsort((lab_P, -mass_P, feat_P))
    first = order[np.r_[True, feat_P[order][1:] != feat_P[order][:-1]]] if len(order) else order
    top_label = np.full(n_features, -1, dtype=np.int64)
    share = np.full(n_features, np.nan)
    top_label[feat_P[first]] = distinct[lab_P[first]]
    share[feat_P[first]] = p_P[first]
    return LabelEntropy(entropy, norm, n_F, top_label, share, len(distinct))
