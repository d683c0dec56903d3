"""The original images behind a store's rows, read back from the webdataset tars the store names."""

import io
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from clipsae.errors import ClipsaeError
from clipsae.pipeline.tario import TarReport, iter_samples
from clipsae.store.reader import ActivationStore


def locate_tar(source: str, shards: Path | None) -> Path | None:
    """Where the tar a part was extracted from is now: ``shards/<its name>`` when given, else its recorded path."""
    if shards is not None:
        moved = Path(shards) / Path(source).name
        return moved if moved.is_file() else None
    return Path(source) if source and Path(source).is_file() else None


def require_tar(part, shards: Path | None) -> Path:
    """Where the tar of store part ``part`` is now (:func:`locate_tar`); one line where it is not there."""
    tar = locate_tar(part.source, shards)
    if tar is None:
        where = f"{Path(shards) / Path(part.source).name}" if shards is not None else repr(part.source)
        raise ClipsaeError(f"the tar of part {part.name} is not at {where}; pass --shards DIR (the folder that now holds it)")
    return tar


def load_images(store: ActivationStore, images: Iterable[int], shards: Path | None = None) -> dict[int, Image.Image]:
    """The RGB images at the given global indices, each tar read once, front to back.

    Raises ClipsaeError naming the first tar that is not where the store says (see ``shards``)
    or an image whose key the tar no longer holds.
    """
    return dict(iter_tar_images(store, images, shards))


def iter_tar_images(store: ActivationStore, images: Iterable[int],
                    shards: Path | None = None) -> Iterator[tuple[int, Image.Image]]:
    """(global index, RGB image) for each given image, one at a time, each tar read once (errors as ``load_images``)."""
    wanted = sorted({int(i) for i in images})
    if not wanted:
        return
    keys = store.keys()
    by_part: dict[int, dict[str, int]] = defaultdict(dict)
    for img in wanted:
        if not 0 <= img < store.n_images:
            raise ClipsaeError(f"image {img} is out of range for a store of {store.n_images} images")
        by_part[store.part_of(img)][str(keys[img])] = img
    for part_index, want in by_part.items():
        part = store.parts[part_index]
        tar = require_tar(part, shards)
        for key, data, _ in iter_samples(str(tar), None, TarReport()):
            if key in want:
                with Image.open(io.BytesIO(data)) as im:
                    yield want.pop(key), im.convert("RGB")
                if not want:
                    break
        if want:
            raise ClipsaeError(f"{tar} does not hold image {next(iter(want))!r} (part {part.name}); is it the tar the store was made from?")


def iter_image_batches(store: ActivationStore, images: Iterable[int], preprocess, batch: int,
                       shards: Path | None = None) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(global indices, preprocessed images_NCHW) in batches of ``batch``, in ascending image order."""
    idx, tensors = [], []
    for img, im in iter_tar_images(store, images, shards):
        idx.append(img)
        tensors.append(preprocess(im))
        if len(idx) == batch:
            yield np.array(idx), torch.stack(tensors)
            idx, tensors = [], []
    if idx:
        yield np.array(idx), torch.stack(tensors)
