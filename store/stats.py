"""Running per-hook statistics, kept per part and summed over the store."""

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class HookStats:
    """Token count, summed L2 norm, largest |x| and count of non-finite values.

    Computed on the values as stored: float16 overflows above 65504, and those
    infinities are what a reader will see, so they are what we count.
    """

    tokens: int = 0
    sum_norm: float = 0.0
    max_abs: float = 0.0
    nonfinite: int = 0

    def update(self, acts_NTD: np.ndarray | torch.Tensor) -> None:
        """Fold a block of activations, in the dtype they are stored in, into the totals.

        Accepts a torch tensor on any device, so extraction can compute it on the GPU
        before the copy to the host; numpy arrays are reduced with torch on the CPU,
        several times faster than numpy on float16.
        """
        self.tokens += int(acts_NTD.shape[0] * acts_NTD.shape[1])
        if not math.prod(acts_NTD.shape):
            return
        x = acts_NTD if isinstance(acts_NTD, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(acts_NTD))
        lo, hi = torch.aminmax(x)  # NaN and inf propagate, so finite extremes mean all finite
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            finite = torch.isfinite(x)
            self.nonfinite += int(x.numel() - finite.sum())
            x = torch.where(finite, x, torch.zeros((), dtype=x.dtype))
            lo, hi = torch.aminmax(x)
        self.max_abs = max(self.max_abs, float(-lo), float(hi))
        self.sum_norm += float(torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).sum(dtype=torch.float64))

    @staticmethod
    def reduce(acts_NTD: torch.Tensor) -> torch.Tensor:
        """(non-finite count, max |x| over finite values, Σ token L2 norms) as a float64 tensor on
        the activations' device, computed without reading anything back (see :meth:`from_reduced`)."""
        if not acts_NTD.numel():
            return torch.zeros(3, dtype=torch.float64, device=acts_NTD.device)
        finite = torch.isfinite(acts_NTD)
        x = torch.where(finite, acts_NTD, torch.zeros((), dtype=acts_NTD.dtype, device=acts_NTD.device))
        return torch.stack([(~finite).sum().double(), x.abs().amax().double(),
                            torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).sum(dtype=torch.float64)])

    @classmethod
    def from_reduced(cls, tokens: int, reduced: np.ndarray) -> "HookStats":
        """The statistics of a block of ``tokens`` tokens from :meth:`reduce`'s three values."""
        return cls(tokens=tokens, sum_norm=float(reduced[2]), max_abs=float(reduced[1]), nonfinite=int(reduced[0]))

    @classmethod
    def of(cls, acts_NTD: np.ndarray | torch.Tensor) -> "HookStats":
        """The statistics of one block."""
        s = cls()
        s.update(acts_NTD)
        return s

    def merge(self, other: "HookStats") -> "HookStats":
        """The statistics of both blocks together."""
        return HookStats(
            tokens=self.tokens + other.tokens,
            sum_norm=self.sum_norm + other.sum_norm,
            max_abs=max(self.max_abs, other.max_abs),
            nonfinite=self.nonfinite + other.nonfinite,
        )

    @property
    def mean_norm(self) -> float:
        return self.sum_norm / self.tokens if self.tokens else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "mean_norm": self.mean_norm}

    @classmethod
    def from_json(cls, d: dict) -> "HookStats":
        return cls(tokens=d["tokens"], sum_norm=d["sum_norm"], max_abs=d["max_abs"], nonfinite=d["nonfinite"])
