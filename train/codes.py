"""Sparse codes: the active latents of a batch of rows, kept without a dense (rows, latents) matrix."""

from dataclasses import dataclass

import torch


@dataclass
class SparseCodes:
    """Active latents of B rows in COO form sorted by row.

    ``rows``, ``cols``, ``vals`` have one entry per active latent (nnz); ``offsets`` (B) gives where
    each row starts in them. TopK gives exactly k per row, other architectures a varying number.
    """

    rows: torch.Tensor  # (nnz,) int64
    cols: torch.Tensor  # (nnz,) int64
    vals: torch.Tensor  # (nnz,) float
    offsets: torch.Tensor  # (B,) int64

    @property
    def n_rows(self) -> int:
        return len(self.offsets)

    def counts(self) -> torch.Tensor:
        """Active latents per row (B,): the L0 of each row."""
        return torch.bincount(self.rows, minlength=self.n_rows)

    def to_dense(self, d_sae: int) -> torch.Tensor:
        """The (B, d_sae) code matrix; for tests and small batches only."""
        out = torch.zeros(self.n_rows, d_sae, dtype=self.vals.dtype, device=self.vals.device)
        out[self.rows, self.cols] = self.vals
        return out

    @classmethod
    def from_mask(cls, f_BN: torch.Tensor, active_BN: torch.Tensor) -> "SparseCodes":
        """The entries of ``f`` where ``active`` is true, row by row."""
        rows, cols = active_BN.nonzero(as_tuple=True)
        return cls(rows, cols, f_BN[rows, cols], row_offsets(rows, f_BN.shape[0]))


def row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Start of each row in a row-sorted COO list (a binary search: no count read back from the device)."""
    return torch.searchsorted(rows, torch.arange(n_rows, device=rows.device))
