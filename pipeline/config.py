"""The typed configuration of an extraction: plain dataclasses, validated once, importable without torch."""

from dataclasses import dataclass

from clipsae.errors import ClipsaeError
from clipsae.store.layout import COMPRESSIONS, DTYPES


@dataclass(frozen=True)
class ModelConfig:
    """Which model and weights to load, and how to preprocess images for it."""

    name: str
    pretrained: str | None = None  # open_clip tag, local checkpoint path, hf-hub:org/repo, or None
    init_seed: int = 0  # seeds the random init when pretrained is None, so reruns agree
    preprocess_like: str | None = None  # take mean/std/interpolation of this pretrained tag
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None


def parse_layers(spec: str) -> list[str]:
    """Split ``"20,22,ln_post"`` into its items, refusing an empty list."""
    items = [s.strip() for s in spec.split(",")]
    if not any(items):
        raise ClipsaeError("--layers is empty; give block indices and/or named points, e.g. 20,22 or ln_post")
    if not all(items):
        raise ClipsaeError(f"--layers {spec!r} has an empty item; write e.g. 6,10")
    return items


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``extract`` needs; it checks its own values when made, before any work starts."""

    model: ModelConfig
    layers: list[str]
    tokens: str
    shards: str
    store: str
    batch_size: int = 64
    device: str = "auto"
    dtype: str = "float16"
    precision: str = "fp32"
    num_workers: int | None = None
    worker_index: int | None = None
    loader_workers: int = 0
    label_key: str | None = None
    compression: str = "none"
    progress: bool = True

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ClipsaeError(f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.precision not in PRECISIONS:
            raise ClipsaeError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.batch_size < 1:
            raise ClipsaeError("--batch-size must be at least 1")
        if self.compression not in COMPRESSIONS:
            raise ClipsaeError(f"--compression must be one of {', '.join(COMPRESSIONS)}, not {self.compression!r}")
        if self.loader_workers < 0:
            raise ClipsaeError("--loader-workers must be 0 or more")
