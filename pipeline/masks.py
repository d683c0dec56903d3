"""Segmentation masks: per-sample PNGs of class indices, turned into one class per patch token.

A mask is an image of class indices (ADE20K's convention: 0 = unlabelled) the size of its sample's
image, stored in the tar under its own extension (``seg.png``). It goes through the geometric steps
of the model's preprocessing (resize, crop, pad) with nearest-neighbour sampling, so that each of its
pixels lands where the image's pixel does; then each cell of a hook's patch grid gets the class that
covers most of its pixels (ties to the smaller index) and that class's share of the cell's pixels.
"""

import copy
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from tqdm import tqdm

from clipsae.errors import ClipsaeError
from clipsae.files import read_json
from clipsae.store.layout import grid_name

MASK_CLASSES_FILE = "mask_classes.json"
UNLABELLED = 0
COLOUR_STEPS = ("MaybeConvertMode",)  # open_clip's steps that change the colour mode, not where pixels are
MAX_CLASSES = 2**16  # patch labels are stored as uint16


def read_mask_classes(path: Path) -> dict[int, str]:
    """Class index → name from a JSON list (index = position) or object (``{"1": "wall", …}``).

    Index 0 means unlabelled whether or not the file names it.
    """
    obj = read_json(path, "mask classes file")
    items = enumerate(obj) if isinstance(obj, list) else obj.items() if isinstance(obj, dict) else None
    try:
        classes = {int(k): str(v) for k, v in items} if items is not None else None
    except (TypeError, ValueError):
        classes = None
    if not classes or min(classes) < 0 or max(classes) >= MAX_CLASSES:
        raise ClipsaeError(f"mask classes file {path} must be a JSON list of names or an object of class index "
                           f"(0 to {MAX_CLASSES - 1}) to name")
    return dict(sorted(classes.items()))


def find_mask_classes(explicit: str | None, first_shard: str | None) -> tuple[dict[int, str] | None, Path | None]:
    """The mask classes of a run and where they came from: ``--mask-classes``, else a
    ``mask_classes.json`` beside the first tar, else none (the run reads no masks)."""
    if explicit:
        return read_mask_classes(Path(explicit)), Path(explicit)
    if first_shard:
        beside = Path(first_shard).parent / MASK_CLASSES_FILE
        if beside.is_file():
            return read_mask_classes(beside), beside
    return None, None


def mask_geometry(preprocess) -> Callable[[Image.Image], Image.Image]:
    """The geometric steps of ``preprocess`` (a torchvision Compose) with nearest-neighbour sampling
    and padding with 0, for masks: a resize or crop of the image moves the mask's pixels with it.

    Steps that convert the colour mode (open_clip's ``MaybeConvertMode``, or a plain function, as older
    open_clip's ``_convert_to_rgb``) are not geometry, and are skipped; everything from ``ToTensor`` on is
    the tensor's. A step of another kind is refused: we cannot know where it moves pixels.
    """
    steps = []
    for step in getattr(preprocess, "transforms", []):
        if isinstance(step, (T.ToTensor, T.PILToTensor)):
            break
        if type(step).__name__ in COLOUR_STEPS or not hasattr(step, "__dict__") or type(step).__name__ == "function":
            continue
        if not isinstance(step, (T.Resize, T.CenterCrop)) and type(step).__name__ not in ("ResizeKeepRatio", "CenterCropOrPad"):
            raise ClipsaeError(f"cannot apply the preprocessing step {type(step).__name__} to segmentation masks")
        step = copy.copy(step)
        if hasattr(step, "interpolation"):
            step.interpolation = InterpolationMode.NEAREST
        if hasattr(step, "fill"):
            step.fill = UNLABELLED
        steps.append(step)
    return T.Compose(steps)


def decode_mask(data: bytes) -> np.ndarray:
    """A mask PNG's class indices as an (H, W) int64 array; palette images give their indices."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            raise ValueError(f"mode {im.mode} is not one channel of class indices")
        return np.asarray(im).astype(np.int64)


def patch_labels(mask_HW: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each grid cell's majority class (ties to the smaller index) and its share of the cell's pixels.

    Pixel (y, x) of an H×W mask belongs to cell (y·rows // H, x·cols // W), so cells split the
    image evenly even when H is not a multiple of rows. Returns (labels uint16, share float16), row-major.
    """
    rows, cols = grid
    h, w = mask_HW.shape
    cell = ((np.arange(h) * rows // h)[:, None] * cols + (np.arange(w) * cols // w)[None, :]).ravel()
    pixels = np.bincount(cell, minlength=rows * cols)
    pair, count = np.unique(cell.astype(np.int64) * MAX_CLASSES + mask_HW.ravel(), return_counts=True)
    cell_of, label_of = pair // MAX_CLASSES, pair % MAX_CLASSES
    # Per cell, largest count first, then the smaller label: the first row of each cell wins.
    order = np.lexsort((label_of, -count, cell_of))
    first = order[np.r_[True, cell_of[order][1:] != cell_of[order][:-1]]]
    return label_of[first].astype(np.uint16), (count[first] / pixels[cell_of[first]]).astype(np.float16)


class MaskMismatch(ValueError):
    """A mask that decodes but does not fit its image or the class list."""


@dataclass(frozen=True)
class MaskSpec:
    """How a run reads masks: the tar extension, the class list, the geometry and the patch grids."""

    ext: str
    classes: Mapping[int, str]
    geometry: Callable[[Image.Image], Image.Image]
    grids: tuple[tuple[int, int], ...]

    def read(self, data: bytes, image_size: tuple[int, int]) -> np.ndarray:
        """The mask in ``data`` as (H, W) class indices; :class:`MaskMismatch` where it does not fit an image
        of ``image_size`` (W, H) or the class list (undecodable bytes raise what PIL raises)."""
        mask_HW = decode_mask(data)
        if mask_HW.shape != (image_size[1], image_size[0]):
            raise MaskMismatch(f"mask is {mask_HW.shape[1]}x{mask_HW.shape[0]}, its image {image_size[0]}x{image_size[1]}")
        bad = np.setdiff1d(np.unique(mask_HW), [UNLABELLED, *self.classes])
        if len(bad):
            raise MaskMismatch(f"mask holds class index {int(bad[0])}, which the mask classes do not list")
        return mask_HW

    def labels(self, mask_HW: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per grid (by :func:`grid_name`): the patches' labels and shares, from a mask :meth:`read` gave."""
        moved = np.asarray(self.geometry(Image.fromarray(mask_HW.astype(np.int32), mode="I"))).astype(np.int64)
        return {grid_name(g): patch_labels(moved, g) for g in self.grids}


def _image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def check_tar_masks(path: str, spec: MaskSpec | None, ext: str, image_exts: tuple[str, ...]) -> None:
    """Refuse a tar whose masks do not fit the run, before anything is written.

    With ``spec``: every sample with an image has a mask, of its image's size, whose indices the
    classes list. Without: no sample may carry a mask (the run would drop them silently).
    Reads the tar's headers, the masks and the images' headers only.
    """
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isfile() and "." in Path(m.name).name:
                    d, base = Path(m.name).parent, Path(m.name).name
                    stem, member_ext = base.split(".", 1)
                    samples.setdefault(str(d / stem), {})[member_ext] = m
            for key, members in samples.items():
                image = next((members[e] for e in image_exts if e in members), None)
                if image is None:
                    continue
                if spec is None:
                    if ext in members:
                        raise ClipsaeError(f"{path}: sample {key} carries a mask ({ext}) but no mask classes were given: "
                                           f"put {MASK_CLASSES_FILE} beside the tars or pass --mask-classes")
                    continue
                if ext not in members:
                    raise ClipsaeError(f"{path}: sample {key} has no mask ({ext}) while others have: every sample "
                                       f"needs one, or none (then leave out {MASK_CLASSES_FILE} and --mask-classes)")
                try:
                    spec.read(tar.extractfile(members[ext]).read(), _image_size(tar.extractfile(image).read()))
                except MaskMismatch as exc:
                    raise ClipsaeError(f"{path}: sample {key}: {exc}") from None
                except Exception as exc:  # PIL raises many types for bad bytes
                    raise ClipsaeError(f"{path}: sample {key}: unreadable mask or image: {type(exc).__name__}: {exc}") from None
    except (tarfile.TarError, EOFError, OSError):
        return  # a truncated tar is extract's to report, for the samples it can read


def check_masks(paths: list[str], spec: MaskSpec | None, ext: str, image_exts: tuple[str, ...],
                progress: bool = True) -> None:
    """:func:`check_tar_masks` for every tar, with a bar where there are masks to decode."""
    for p in tqdm(paths, unit="tar", desc="check masks", disable=not progress or spec is None, dynamic_ncols=True):
        check_tar_masks(p, spec, ext, image_exts)
