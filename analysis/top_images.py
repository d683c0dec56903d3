"""Top-k images per feature, in one streaming pass over the cached per-image values."""

from dataclasses import dataclass

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes


@dataclass(frozen=True)
class TopImages:
    """Each feature's best images: row f of every (n_features, k) array; image −1 marks an empty slot.

    Rank j (0-based column) is the (j+1)-th largest value; ties go to the smaller image index.
    """

    images_FK: np.ndarray
    values_FK: np.ndarray
    tokens_FK: np.ndarray

    @property
    def k(self) -> int:
        return self.images_FK.shape[1]

    def filled_F(self) -> np.ndarray:
        """How many images each feature has (value > 0), at most k."""
        return (self.images_FK >= 0).sum(1)


def check_k(k: int) -> None:
    if k < 1:
        raise ClipsaeError(f"-k must be at least 1, not {k}")


def top_images(codes: Codes, k: int, by: str = "max") -> TopImages:
    """The k images with the largest per-image value (``by``) of every feature; only values > 0.

    Memory: the (features, k) table plus one block of entries, whatever the store's size.
    """
    check_k(k)
    n = codes.d_sae
    values = np.full((n, k), -np.inf, dtype=np.float32)
    images = np.full((n, k), -1, dtype=np.int64)
    tokens = np.full((n, k), -1, dtype=np.int64)
    for block in codes.iter_images(by):
        lat, val = block.latents_E, block.values_E
        # Images arrive in ascending order, so an entry equal to the current k-th value loses its tie.
        keep = val > values[lat, k - 1]
        if not keep.any():
            continue
        lat, val = lat[keep], val[keep]
        img, tok = block.image_of_E[keep], block.tokens_E[keep]
        touched = np.unique(lat)
        old = images[touched] >= 0
        cand_lat = np.concatenate([np.repeat(touched, k)[old.ravel()], lat])
        cand_val = np.concatenate([values[touched][old], val])
        cand_img = np.concatenate([images[touched][old], img])
        cand_tok = np.concatenate([tokens[touched][old], tok])
        order = np.lexsort((cand_img, -cand_val, cand_lat))
        cand_lat = cand_lat[order]
        first = np.searchsorted(cand_lat, cand_lat, side="left")
        rank = np.arange(len(order)) - first
        sel = rank < k
        rows, cols, pick = cand_lat[sel], rank[sel], order[sel]
        values[touched], images[touched], tokens[touched] = -np.inf, -1, -1
        values[rows, cols], images[rows, cols], tokens[rows, cols] = cand_val[pick], cand_img[pick], cand_tok[pick]
    values[images < 0] = 0.0
    return TopImages(images, values, tokens)
