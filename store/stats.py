"""Running per-hook statistics, kept per part and summed over the store."""

from dataclasses import asdict, dataclass

import numpy as np


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

    def update(self, acts_NTD: np.ndarray) -> None:
        """Fold a block of stored activations into the totals."""
        x = acts_NTD.astype(np.float32, copy=False)
        finite = np.isfinite(x)
        self.nonfinite += int(x.size - np.count_nonzero(finite))
        x = np.where(finite, x, 0.0)
        self.tokens += int(x.shape[0] * x.shape[1])
        if x.size:
            self.sum_norm += float(np.linalg.norm(x, axis=-1).sum(dtype=np.float64))
            self.max_abs = max(self.max_abs, float(np.abs(x).max()))

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
