"""The typed configuration of a training run; it checks its own values when made (no torch here)."""

import math
from dataclasses import dataclass, field
from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.store.location import absolute
from clipsae.train.spec import SAESpec

DEFAULT_BATCH = 4096
DEFAULT_WARMUP = 1000
DEFAULT_DEAD_TOKENS = 10_000_000
PRECISIONS = ("fp32", "bf16")


def default_lr(n_latents: int) -> float:
    """lr = 2e-4 / √(n / 2^14): smaller steps for wider SAEs, 2e-4 at 16,384 latents."""
    return 2e-4 / math.sqrt(n_latents / 2**14)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; ``identity()`` is what a rerun into the same ``out`` must match."""

    store: Path
    hook: str
    tokens: str
    out: Path
    saes: tuple[SAESpec, ...]
    steps: int
    store_images: int = 0  # complete images when the run started: a store that grew is another run
    batch_size: int = DEFAULT_BATCH
    lr: float | None = None
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    holdout: float = 0.01
    warmup_steps: int = DEFAULT_WARMUP
    decay_fraction: float = 0.2
    clip: float = 1.0
    dead_tokens: int = DEFAULT_DEAD_TOKENS
    resample_every: int = 0
    buffer_rows: int = 2**18
    loader_threads: int = 2
    eval_every: int = 0
    eval_rows: int = 2**16
    scale_rows: int = 2**20
    log_every: int = 50
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    snapshot_every: int = 0  # tokens between exported snapshots (0: none); not in identity(), like checkpointing
    wandb_project: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, value in (("--batch-size", self.batch_size), ("--buffer-rows", self.buffer_rows),
                            ("--loader-threads", self.loader_threads), ("--eval-rows", self.eval_rows),
                            ("--warmup-steps", self.warmup_steps), ("--dead-tokens", self.dead_tokens),
                            ("--steps", self.steps)):
            if value < 1:
                raise ClipsaeError(f"{name} must be at least 1, not {value}")
        for name, value in (("--eval-every", self.eval_every), ("--checkpoint-every", self.checkpoint_every),
                            ("--resample-every", self.resample_every), ("--snapshot-every", self.snapshot_every)):
            if value < 0:
                raise ClipsaeError(f"{name} must be at least 0, not {value}")
        if not 0 <= self.holdout < 1:
            raise ClipsaeError(f"--holdout must be in [0, 1), not {self.holdout}")
        if not self.checkpoint_minutes > 0:
            raise ClipsaeError(f"--checkpoint-minutes must be positive, not {self.checkpoint_minutes}")
        if self.lr is not None and not self.lr > 0:
            raise ClipsaeError(f"--lr must be positive, not {self.lr}")
        if self.precision not in PRECISIONS:
            raise ClipsaeError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if not self.saes:
            raise ClipsaeError("a run needs at least one SAE")

    def lr_of(self, spec: SAESpec) -> float:
        return self.lr if self.lr is not None else default_lr(spec.n)

    @property
    def warmup(self) -> int:
        """Warm-up steps, at most a tenth of a short run."""
        return min(self.warmup_steps, max(1, self.steps // 10))

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to 0 over the last ``decay_fraction``."""
        warm = min(1.0, (step + 1) / self.warmup)
        decay_start = self.steps * (1 - self.decay_fraction)
        if self.decay_fraction > 0 and step >= decay_start:
            return warm * max(0.0, (self.steps - step) / (self.steps - decay_start))
        return warm

    def sae_dir(self, spec: SAESpec) -> Path:
        """Where an SAE's files go: ``out`` itself for a single SAE, ``out/<label>`` in a sweep."""
        return self.out if len(self.saes) == 1 else self.out / spec.label

    def identity(self) -> dict:
        """The settings that decide the result (not where logs go or how often it checkpoints)."""
        return {
            "store": str(absolute(self.store)), "store_images": self.store_images, "hook": self.hook, "tokens": self.tokens,
            "saes": [s.to_json() for s in self.saes], "steps": self.steps, "batch_size": self.batch_size,
            "lr": self.lr, "precision": self.precision, "seed": self.seed, "holdout": self.holdout, "warmup_steps": self.warmup_steps,
            "decay_fraction": self.decay_fraction, "clip": self.clip, "dead_tokens": self.dead_tokens,
            "resample_every": self.resample_every, "buffer_rows": self.buffer_rows, "scale_rows": self.scale_rows,
        }
