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
    # Value per (feature, label), over the labels present in the store.
    lab_idx = np.searchsorted(distinct, img_lab[rows, cols])
    mass = np.zeros((n_features, max(len(distinct), 1)))
    np.add.at(mass, (rows, lab_idx), top.values_FK[rows, cols])
    total = mass.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(total > 0, mass / total, 0.0)
        h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(1)
    entropy = np.where(n_F >= min_hits, h, np.nan)
    norm = entropy / np.log(len(distinct)) if len(distinct) > 1 else np.full(n_features, np.nan)
    best = mass.argmax(1)
    has = n_F > 0
    top_label = np.where(has, distinct[best] if len(distinct) else -1, -1)
    share = np.where(has, p[np.arange(n_features), best], np.nan)
    return LabelEntropy(entropy, norm, n_F, top_label, share, len(distinct))
