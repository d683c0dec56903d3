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

    def first(self, k: int) -> "TopImages":
        """The same table cut to its first ``k`` ranks."""
        return TopImages(self.images_FK[:, :k], self.values_FK[:, :k], self.tokens_FK[:, :k])


def check_k(k: int) -> None:
    if k < 1:
        raise ClipsaeError(f"-k must be at least 1, not {k}")


class StreamingTopK:
    """The k entries of largest score in each of ``n_groups`` groups, fed in blocks in ascending image order.

    Each entry carries an image, a token and a value (its score unless given). Ties go to the smaller image (the earlier entry), so the
    result does not depend on how the stream was cut into blocks.
    """

    def __init__(self, n_groups: int, k: int):
        check_k(k)
        self.k = k
        self.scores = np.full((n_groups, k), -np.inf, dtype=np.float32)
        self.images = np.full((n_groups, k), -1, dtype=np.int64)
        self.tokens = np.full((n_groups, k), -1, dtype=np.int64)
        self.values = np.zeros((n_groups, k), dtype=np.float32)

    def update(self, group_E: np.ndarray, score_E: np.ndarray, image_E: np.ndarray, token_E: np.ndarray,
               value_E: np.ndarray | None = None) -> None:
        k, scores, images, tokens, values = self.k, self.scores, self.images, self.tokens, self.values
        value_E = score_E if value_E is None else value_E
        # Images arrive in ascending order, so an entry equal to the current k-th score loses its tie.
        keep = score_E > scores[group_E, k - 1]
        if not keep.any():
            return
        grp, sc = group_E[keep], score_E[keep]
        img, tok, val = image_E[keep], token_E[keep], value_E[keep]
        touched = np.unique(grp)
        old = images[touched] >= 0
        cand_grp = np.concatenate([np.repeat(touched, k)[old.ravel()], grp])
        cand_sc = np.concatenate([scores[touched][old], sc])
        cand_img = np.concatenate([images[touched][old], img])
        cand_tok = np.concatenate([tokens[touched][old], tok])
        cand_val = np.concatenate([values[touched][old], val])
        order = np.lexsort((cand_img, -cand_sc, cand_grp))
        cand_grp = cand_grp[order]
        first = np.searchsorted(cand_grp, cand_grp, side="left")
        rank = np.arange(len(order)) - first
        sel = rank < k
        rows, cols, pick = cand_grp[sel], rank[sel], order[sel]
        scores[touched], images[touched], tokens[touched], values[touched] = -np.inf, -1, -1, 0.0
        scores[rows, cols], images[rows, cols], tokens[rows, cols] = cand_sc[pick], cand_img[pick], cand_tok[pick]
        values[rows, cols] = cand_val[pick]


def top_images(codes: Codes, k: int, by: str = "max") -> TopImages:
    """The k images with the largest per-image value (``by``) of every feature; only values > 0.

    Memory: the (features, k) table plus one block of entries, whatever the store's size.
    """
    top = StreamingTopK(codes.d_sae, k)
    for block in codes.iter_images(by):
        top.update(block.latents_E, block.values_E, block.image_of_E, block.tokens_E)
    return TopImages(top.images, top.values, top.tokens)
