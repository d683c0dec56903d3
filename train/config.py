"""The typed configuration of a training run; it checks its own values when made (no torch here)."""

import math
from dataclasses import dataclass, field
from pathlib import Path

from clipsae import options
from clipsae.errors import ClipsaeError
from clipsae.options import check, option
from clipsae.store.location import absolute
from clipsae.train.spec import SAESpec

DEFAULT_BATCH = 4096
DEFAULT_WARMUP = 1000
DEFAULT_DEAD_TOKENS = 10_000_000
PRECISIONS = ("fp32", "bf16")


def default_lr(d_sae: int) -> float:
    """lr = 2e-4 / √(n / 2^14): smaller steps for wider SAEs, 2e-4 at 16,384 latents."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


@dataclass(frozen=True)
class RunSettings:
    """How a run trains, beside what it trains on and which SAEs: each field is a `clipsae train` option
    (clipsae/options.py), checked here once, and those marked ``identity`` decide the run's result."""

    batch_size: int = option(DEFAULT_BATCH, at_least=1, identity=True)
    """Tokens per step, the global batch over all training processes; refused if larger than the training rows."""
    lr: float | None = option(None, above=0, identity=True, shown_default="2e-4/√(n/2^14)")
    """Adam learning rate."""
    precision: str | None = option(None, choices=PRECISIONS, identity=True, shown_default="bf16 on CUDA, fp32 on CPU")
    """Encoder matmul precision; the weights stay fp32."""
    seed: int = option(0, identity=True, cli=False)
    """Seed of the data order and the holdout split (the first of --seed), and of the initialisation of SAEs without their own."""
    holdout: float = option(0.01, at_least=0, below=1, identity=True)
    """Fraction of images (by key hash) kept for evaluation; 0 is allowed and noted: no held-out metrics."""
    warmup_steps: int = option(DEFAULT_WARMUP, at_least=1, identity=True)
    """Linear learning-rate warm-up, at most a tenth of the run."""
    decay_fraction: float = option(0.2, at_least=0, below=1, identity=True, cli=False)
    """The last fraction of the run over which the learning rate decays linearly to 0."""
    clip: float = option(1.0, identity=True, cli=False)
    """Gradient norm clip."""
    dead_tokens: int = option(DEFAULT_DEAD_TOKENS, at_least=1, identity=True)
    """A latent silent this many tokens is dead (at most a tenth of the run's tokens)."""
    resample_every: int = option(0, at_least=0, identity=True)
    """relu: resample dead latents every N steps in the first half of the run (0: never)."""
    buffer_rows: int = option(2**18, at_least=1, identity=True)
    """Shuffle buffer size in rows."""
    scale_rows: int = option(2**20, identity=True, cli=False)
    """Rows sampled for the input scale."""
    loader_threads: int = option(2, at_least=1)
    """Chunk-reading threads."""
    eval_every: int = option(0, at_least=0, shown_default="10 per run")
    """Held-out evaluation every N steps."""
    eval_rows: int = option(2**16, at_least=1)
    """Held-out rows used for evaluation."""
    log_every: int = option(50, at_least=1, cli=False)
    """Steps between training-metric lines in metrics.jsonl."""
    checkpoint_every: int = option(0, at_least=0)
    """Also checkpoint every N steps (0: by time only)."""
    checkpoint_minutes: float = option(10.0, above=0)
    """Checkpoint at least this often, in minutes."""
    snapshot_every: float = option(0, at_least=0)
    """Also export each SAE every this many training tokens (e.g. 1e8) under snapshots/<tokens>/ (0: never)."""
    wandb_project: str | None = option(None, flag_name="--wandb", metavar="PROJECT")
    """Also log to this wandb project (WANDB_MODE=offline works)."""
    threads: int | None = option(None, at_least=1, shown_default="torch's")
    """torch CPU threads (a shared node's cores are not all yours)."""

    def __post_init__(self):
        check(self)
        if self.snapshot_every != int(self.snapshot_every):
            raise ClipsaeError(f"--snapshot-every must be a whole number of tokens, at least 0, not {self.snapshot_every:g}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunSettings):
    """Everything a run needs: its settings and what ``clipsae train`` resolved from the rest of its options;
    ``identity()`` is what a rerun into the same ``out`` must match."""

    store: Path
    hook: str
    tokens: str
    out: Path
    saes: tuple[SAESpec, ...]
    steps: int
    store_images: int = 0  # complete images when the run started: a store that grew is another run
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1:
            raise ClipsaeError(f"--steps must be at least 1, not {self.steps}")
        if not self.saes:
            raise ClipsaeError("a run needs at least one SAE")

    def lr_of(self, spec: SAESpec) -> float:
        return self.lr if self.lr is not None else default_lr(spec.d_sae)

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
        return {"store": str(absolute(self.store)), "store_images": self.store_images, "hook": self.hook,
                "tokens": self.tokens, "saes": [s.to_json() for s in self.saes], "steps": self.steps,
                **options.identity(self), **({"universal": self.extra["universal"]} if "universal" in self.extra else {})}
