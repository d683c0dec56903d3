"""What `clipsae encode` is asked: each field is its option (clipsae/options.py), checked here once.

No torch here, so that ``clipsae encode --help`` and option errors answer at once.
"""

from dataclasses import dataclass
from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.options import check, option
from clipsae.store.layout import ANALYSIS_SUFFIX, TOKEN_MODES
from clipsae.train.formats import names as sae_formats
from clipsae.train.formats import parse_options

DEFAULT_MAX_ACTIVE = 64
DEFAULT_BATCH_ROWS = 8192
INPUT_NORMS = ("none", "store")


@dataclass(frozen=True)
class EncodeConfig:
    """What ``clipsae encode`` was asked; checks its own values when made."""

    store: str | Path = option()
    """Activation store: a folder, s3://bucket/… or gs://bucket/…."""
    sae: Path = option()
    """An SAE: a `clipsae train` folder, or one published by SAELens, sparsify, dictionary_learning, ViT-Prisma,
    saev, CLIP-Scope, MSAE or overcomplete (detected from the files); hf-hub:ORG/REPO[/PATH] downloads one."""
    name: str | None = option(None, shown_default="the SAE folder's name")
    """Name of the cached codes."""
    hook: str | None = option(None, shown_default="the SAE's, or the store's only hook of its width")
    """Hook to encode."""
    tokens: str | None = option(None, choices=TOKEN_MODES, shown_default="those the SAE was trained on, else all")
    """Tokens to encode."""
    device: str = option("auto")
    """cuda, cuda:N, cpu, or auto (cuda when there is one)."""
    batch_size: int = option(DEFAULT_BATCH_ROWS, at_least=1)
    """Token rows per SAE forward pass."""
    max_active: int | None = option(None, at_least=1, shown_default=f"k for TopK SAEs, else {DEFAULT_MAX_ACTIVE}")
    """Latents kept per token; the count cut is reported."""
    num_workers: int | None = option(None, shown_default="SLURM_ARRAY_TASK_COUNT, else 1")
    """Jobs sharing the store."""
    worker_index: int | None = option(None, shown_default="SLURM_ARRAY_TASK_ID, else 0")
    """This job's index."""
    threads: int | None = option(None, at_least=1, shown_default="torch's")
    """torch CPU threads (a shared node's cores are not all yours)."""
    progress: bool = option(True, cli=False)
    """Show a progress bar (the command line's --quiet turns it off)."""
    sae_format: str | None = option(None, choices=tuple(sae_formats()), shown_default="detected from the files")
    """The SAE's format, where detection from its files should not decide."""
    sae_options: str | None = option(None, metavar="KEY=VALUE,…")
    """Settings the SAE's files do not record, for the formats that ask for them (overcomplete state dicts: class,
    top_k, k, delta, normalization); the codes record them for every later reader."""
    input_norm: str = option("none", choices=INPUT_NORMS)
    """store: standardise each dimension with the store's mean and std first, for SAEs trained on standardised
    activations that did not ship their statistics (CLIP-Scope, early saev)."""

    def __post_init__(self):
        check(self)
        parse_options(self.sae_options)
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")
                                      or self.name.endswith(ANALYSIS_SUFFIX)):
            raise ClipsaeError(f"--name {self.name!r} is not a usable codes name (a plain folder name)")

    @property
    def codes_name(self) -> str:
        return self.name or Path(self.sae).resolve().name
