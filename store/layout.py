"""Names, sizes and the token layout that define an activation store on disk (docs/store.md)."""

import math
import re
from dataclasses import dataclass

# 1: token layout only as prose in each hook's meaning; keys in zarr-python's `string` type.
# 2: token layout as data (`cls_token`, `grid`); keys as UTF-8 in a uint8 array; per-chunk checksums.
# 3: the token layout also counts register tokens (`registers`), which follow the CLS token.
FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
PARTS = "parts"
ACTS = "acts"
KEYS = "keys"
LABELS = "labels"
# Per patch grid (``16x16``), each image's patches' majority class from its segmentation mask and that
# class's share of the patch's pixels: PATCH_LABELS/<grid> (uint16) and PATCH_LABEL_SHARE/<grid> (float16).
PATCH_LABELS = "patch_labels"
PATCH_LABEL_SHARE = "patch_label_share"
MASK_CLASSES = "mask_classes"  # store config: class index -> name of the masks' indices (0 = unlabelled)
COMPLETE = "complete"
STARTED_BY = "started_by"  # part attribute: host, pid, time (and Slurm job) of the writer that began it
CHUNKS = "chunks"  # part attribute: per hook, rows per chunk and each chunk's CRC32C

# The hook names `clipsae extract` gives (pipeline/hooks.py); stores written by other code may use any.
EXTRACT_HOOK_NAME = re.compile(r"resid\.\d+|ln_pre|ln_post|embed|layer[1-4]|attnpool|norm|pooled|stage\.\d+")

# Chunks are the unit of reading: big enough that a shuffled read runs at disk speed,
# small enough that a shuffle buffer holds many of them.
TARGET_CHUNK_BYTES = 8 * 2**20
DTYPES = ("float16", "float32")
COMPRESSIONS = ("none", "zstd")
ANALYSIS_SUFFIX = "-analysis"  # codes/<name>-analysis: where analyses of codes <name> write by default
# Which of a hook's stored tokens a command reads (or extract keeps): the CLS token, the patches, or all.
TOKEN_MODES = ("cls", "patches", "all")


def grid_name(grid: tuple[int, int]) -> str:
    """The name a patch grid's label arrays carry in a part: ``16x16``."""
    return f"{grid[0]}x{grid[1]}"


def patch_grids(hooks) -> tuple[tuple[int, int], ...]:
    """The distinct patch grids of ``hooks`` (HookLayouts), sorted: those a part keeps patch labels at."""
    return tuple(sorted({h.grid for h in hooks if h.grid is not None}))


def chunk_rows(n_tokens: int, d: int, itemsize: int, target_bytes: int = TARGET_CHUNK_BYTES,
               expected_images: int | None = None) -> int:
    """Images per chunk: about ``target_bytes`` a chunk, fitted to the part when its size is known.

    The last chunk of an array is stored at full size, so a part of n images in chunks of c rows
    wastes up to c − 1 rows. Knowing n, we take the fewest chunks of at most the target size and
    spread n evenly over them: the padding is then under one row per chunk.
    """
    return fitted_rows(max(1, target_bytes // (n_tokens * d * itemsize)), expected_images)


def fitted_rows(rows: int, expected: int | None) -> int:
    """At most ``rows`` rows per chunk, spread evenly over the fewest chunks that hold ``expected`` rows."""
    if not expected:
        return rows
    n_chunks = -(-expected // rows)
    return -(-expected // n_chunks)


@dataclass(frozen=True)
class HookLayout:
    """Shape and token layout of one hook's rows: ``n_tokens`` tokens of dimension ``d`` per image.

    The prefix tokens come first: the CLS token (token 0, where ``cls_token``), then ``registers``
    register tokens (DINOv2 and DINOv3 with registers). ``grid``: the tokens after the prefix are the
    patches (or feature-map positions) of a (rows, cols) grid, row-major. A hook with one token and
    no grid is a pooled vector (or the CLS token alone); one with several and no grid is tokens of no
    known layout.
    """

    name: str
    n_tokens: int
    d: int
    meaning: str = ""
    cls_token: bool = False
    grid: tuple[int, int] | None = None
    registers: int = 0

    def __post_init__(self):
        if self.grid is not None:
            gh, gw = self.grid
            if self.prefix + gh * gw != self.n_tokens:
                before = ("CLS + " if self.cls_token else "") + (f"{self.registers} registers + " if self.registers else "")
                raise ValueError(f"hook {self.name}: {self.n_tokens} tokens cannot be {before}a {gh}x{gw} grid")

    @property
    def prefix(self) -> int:
        """How many tokens come before the grid: the CLS token and the registers."""
        return int(self.cls_token) + self.registers

    def to_json(self) -> dict:
        return {"n_tokens": self.n_tokens, "d": self.d, "meaning": self.meaning, "cls_token": self.cls_token,
                "registers": self.registers, "grid": list(self.grid) if self.grid is not None else None}

    @classmethod
    def from_json(cls, name: str, obj: dict, format_version: int, store_tokens: str | None = None) -> "HookLayout":
        """Read a hook's entry of the store config; format 1 derives the layout from the prose."""
        n, d, meaning = int(obj["n_tokens"]), int(obj["d"]), obj.get("meaning", "")
        if format_version >= 2:
            grid = obj.get("grid")
            return cls(name, n, d, meaning, bool(obj.get("cls_token", False)), tuple(grid) if grid else None,
                       int(obj.get("registers", 0)))
        return cls(name, n, d, meaning, *_format1_tokens(n, meaning, store_tokens))


def _format1_tokens(n: int, meaning: str, store_tokens: str | None) -> tuple[bool, tuple[int, int] | None]:
    """(cls_token, grid) of a format-1 hook, from its meaning text and the store's token mode.

    Format 1 wrote "CLS then GxG patches row-major" for every ViT token hook whatever was stored,
    so the store's ``tokens`` decides: ``patches`` stores had no CLS token.
    """
    cls_token = "CLS then" in meaning and store_tokens != "patches"
    if n == 1:
        return cls_token, None
    m = re.search(r"(\d+)x(\d+) patches", meaning)
    patches = n - int(cls_token)
    if m and int(m[1]) * int(m[2]) == patches:
        return cls_token, (int(m[1]), int(m[2]))
    side = math.isqrt(patches)
    if "spatial positions" in meaning and side * side == patches:
        return cls_token, (side, side)
    return cls_token, None
