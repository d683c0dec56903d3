"""Below the top: a few images drawn at random from each activation interval of each feature.

Neuronpedia's quantile groups. With m the feature's largest per-image value and Q intervals,
interval q (0 = lowest) holds the images whose value v has q·m/Q < v ≤ (q+1)·m/Q. Each image of an
interval is equally likely to be drawn: an image's priority is a hash of (feature, image, seed) and
the interval keeps the images of highest priority, so one streaming pass suffices and a rerun draws
the same images. The feature's top-k images are left out, since the report shows them already.
"""

from dataclasses import dataclass

import numpy as np

from clipsae.analysis.features.top_images import StreamingTopK, TopImages
from clipsae.store.codes import Codes

N_INTERVALS = 4
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class IntervalSamples:
    """(features, intervals, samples) arrays; image −1 marks an empty slot. Within an interval,
    samples are ordered by value, largest first."""

    images_FQS: np.ndarray
    values_FQS: np.ndarray
    tokens_FQS: np.ndarray

    @property
    def n_intervals(self) -> int:
        return self.images_FQS.shape[1]


def priority(feature_E: np.ndarray, image_E: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random number in [0, 1) per (feature, image), from splitmix64; exact in float32."""
    with np.errstate(over="ignore"):
        z = (feature_E.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + image_E.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(seed)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)


def interval_of(values_E: np.ndarray, max_E: np.ndarray, n_intervals: int) -> np.ndarray:
    """The interval (0 … n_intervals−1) of each positive value, given its feature's maximum."""
    q = np.ceil(values_E.astype(np.float64) / max_E * n_intervals).astype(np.int64) - 1
    return np.clip(q, 0, n_intervals - 1)


def interval_samples(codes: Codes, top: TopImages, per_interval: int, by: str = "max",
                     n_intervals: int = N_INTERVALS, seed: int = 0) -> IntervalSamples:
    """``per_interval`` random images from each of ``n_intervals`` intervals of every feature,
    outside its images in ``top`` (whose first column gives each feature's maximum)."""
    max_F = top.values_FK[:, 0].astype(np.float64)
    n_F, spare = codes.d_sae, top.k
    pick = StreamingTopK(n_F * n_intervals, per_interval + spare)
    for block in codes.iter_images(by):
        pick_block(pick, block, max_F, n_intervals, seed)
    return samples_of(pick, top.images_FK, n_F, n_intervals, per_interval)


def pick_block(pick: StreamingTopK, block, max_F: np.ndarray, n_intervals: int, seed: int) -> None:
    """Feed one block of per-image values (store/codes.py ImageValues) to the per-(feature, interval) picks,
    each entry by its priority, given each feature's maximum ``max_F``."""
    lat, img = block.latents_E, block.image_of_E
    group = lat * n_intervals + interval_of(block.values_E, max_F[lat], n_intervals)
    pick.update(group, priority(lat, img, seed), img, block.tokens_E, block.values_E)


def samples_of(pick: StreamingTopK, top_images_FK: np.ndarray, n_features: int, n_intervals: int,
               per_interval: int) -> IntervalSamples:
    """The samples from a pass's per-(feature, interval) picks by priority: the images of ``top_images_FK``
    left out, the first ``per_interval`` survivors kept and ordered by value."""
    images = pick.images.reshape(n_features, n_intervals, -1)
    values = pick.values.reshape(n_features, n_intervals, -1)
    tokens = pick.tokens.reshape(n_features, n_intervals, -1)
    in_top = (images[:, :, :, None] == top_images_FK[:, None, None, :]).any(-1) & (images >= 0)
    images = np.where(in_top, -1, images)
    # Keep the first per_interval survivors by priority, then order them by value.
    order = np.argsort(images < 0, axis=2, kind="stable")[:, :, :per_interval]
    images, values, tokens = (np.take_along_axis(a, order, 2) for a in (images, values, tokens))
    by_value = np.argsort(np.where(images >= 0, -values, np.inf), axis=2, kind="stable")
    images, values, tokens = (np.take_along_axis(a, by_value, 2) for a in (images, values, tokens))
    values[images < 0], tokens[images < 0] = 0.0, -1
    return IntervalSamples(images, values, tokens)
