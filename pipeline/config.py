"""What `clipsae extract` is asked: each field is its option (clipsae/options.py), checked here once.

No torch here, so that ``clipsae extract --help`` and option errors answer at once.
"""

from dataclasses import dataclass

from clipsae.errors import ClipsaeError
from clipsae.options import check, option
from clipsae.store.layout import COMPRESSIONS, DTYPES, TOKEN_MODES

PRECISIONS = ("fp32", "bf16", "fp16")


def parse_layers(spec: str) -> list[str]:
    """Split ``"20,22,ln_post"`` into its items, refusing an empty list."""
    items = [s.strip() for s in spec.split(",")]
    if not any(items):
        raise ClipsaeError("--layers is empty; give block indices and/or named points, e.g. 20,22 or ln_post")
    if not all(items):
        raise ClipsaeError(f"--layers {spec!r} has an empty item; write e.g. 6,10")
    return items


def _triple(value, name: str) -> tuple[float, float, float] | None:
    """Three numbers from ``"0.5,0.5,0.5"`` (or a sequence of three), or None."""
    if value is None:
        return None
    try:
        parts = tuple(float(x) for x in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise ClipsaeError(f"{name} must be three comma-separated numbers, got {value!r}") from None
    if len(parts) != 3:
        raise ClipsaeError(f"{name} must be three comma-separated numbers, got {value!r}")
    return parts


@dataclass(frozen=True)
class ModelConfig:
    """Which model and weights to load, and how to preprocess images for it."""

    name: str = option(flag_name="--model")
    """open_clip model name (ViT-L-14, RN50, ViT-B-16-SigLIP2, EVA02-B-16, MobileCLIP2-S0), hf-hub:org/repo, or timm:NAME for a timm model alone (timm:vit_small_patch14_reg4_dinov2)."""
    pretrained: str | None = option(None, shown_default="random weights")
    """open_clip tag (laion2b_s32b_b82k), a local checkpoint file, or hf-hub:org/repo; for timm:NAME, a state dict file of that model or timm's tag (lvd142m)."""
    init_seed: int = option(0, flag_name="--seed")
    """Seed of the random init when --pretrained is omitted, so that reruns agree."""
    preprocess_like: str | None = option(None)
    """Use the preprocessing of this pretrained tag (for local checkpoints)."""
    image_mean: tuple[float, float, float] | None = option(None, metavar="R,G,B")
    """Override the normalisation mean, e.g. 0.5,0.5,0.5."""
    image_std: tuple[float, float, float] | None = option(None, metavar="R,G,B")
    """Override the normalisation std."""

    def __post_init__(self):
        object.__setattr__(self, "image_mean", _triple(self.image_mean, "--image-mean"))
        object.__setattr__(self, "image_std", _triple(self.image_std, "--image-std"))


@dataclass(frozen=True)
class ExtractConfig:
    """Everything ``extract`` needs; it checks its own values when made, before any work starts."""

    model: ModelConfig = option(cli=False)
    """The model, its weights and preprocessing (ModelConfig's fields are their own options)."""
    layers: list[str] = option()
    """Comma-separated hooks: block indices (20,22,-1) or ln_pre, ln_post, embed; layer1..layer4, attnpool for ResNets."""
    shards: str = option()
    """Input tars: brace pattern 'data/{00000..00099}.tar', a directory, or a text file listing them."""
    store: str = option()
    """Output Zarr store (created, or extended by a rerun): a folder, s3://… or gs://…."""
    tokens: str = option("all", choices=TOKEN_MODES)
    """Which tokens of each hook to store."""
    batch_size: int = option(64, at_least=1)
    """Images per forward pass."""
    device: str = option("auto")
    """cuda, cuda:N, cpu, or auto (cuda when there is one)."""
    dtype: str = option("float16", choices=DTYPES)
    """Stored dtype."""
    precision: str = option("fp32", choices=PRECISIONS)
    """Compute precision (autocast)."""
    num_workers: int | None = option(None, shown_default="SLURM_ARRAY_TASK_COUNT, else 1")
    """Jobs sharing the tars."""
    worker_index: int | None = option(None, shown_default="SLURM_ARRAY_TASK_ID, else 0")
    """This job's index."""
    loader_workers: int = option(0, at_least=0)
    """Processes decoding images."""
    label_key: str | None = option(None, shown_default="the sample's cls file")
    """Take the label from this field of each sample's json."""
    compression: str = option("none", choices=COMPRESSIONS)
    """Chunk compression (zstd level 1), for disks slower than the reader."""
    threads: int | None = option(None, at_least=1, shown_default="torch's")
    """torch CPU threads (a shared node's cores are not all yours)."""
    mask_ext: str = option("seg.png")
    """Extension of each sample's segmentation mask in the tars: a PNG of class indices, 0 = unlabelled."""
    mask_classes: str | None = option(None, shown_default="mask_classes.json beside the tars, if there is one")
    """JSON naming the masks' class indices; with it, every sample needs a mask and the store keeps patch labels."""
    skip_bad_tars: bool = option(False)
    """Record a tar that holds no readable image as an empty part and go on, instead of stopping there."""
    progress: bool = option(True, cli=False)
    """Show a progress bar (the command line's --quiet turns it off)."""

    def __post_init__(self):
        if isinstance(self.layers, str):
            object.__setattr__(self, "layers", parse_layers(self.layers))
        check(self)
