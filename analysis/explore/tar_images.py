"""Any one store image read straight from its tar: the tar's headers are listed once (where each
image's bytes lie), then an image is one seek and one read, not a scan of the tar."""

import io
import re
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from clipsae.analysis.images import require_tar
from clipsae.analysis.report.thumbnails import QUALITY
from clipsae.errors import ClipsaeError
from clipsae.pipeline.tario import IMAGE_EXTS, decode_rgb
from clipsae.store.reader import ActivationStore

THUMBS_CACHED_BYTES = 64 * 2**20
_KEY = re.compile(r"^(.*?/?[^/.]+)\.([^/]+)$")  # webdataset: the key ends at the first dot of the file name


class LRU:
    """A thread-safe cache of at most ``capacity`` items whose ``weight`` (1 each by default) sums to at most
    ``budget``, the least recently used dropped first (the newest is kept whatever its weight)."""

    def __init__(self, capacity: int, budget: float = float("inf"), weight=lambda value: 1):
        self.capacity, self.budget, self.weight = capacity, budget, weight
        self._items, self._lock, self._total = OrderedDict(), threading.Lock(), 0

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        return None

    def put(self, key, value):
        with self._lock:
            if key in self._items:
                self._total -= self._items.pop(key)[1]
            w = self.weight(value)
            self._items[key] = (value, w)
            self._total += w
            while len(self._items) > 1 and (len(self._items) > self.capacity or self._total > self.budget):
                self._total -= self._items.popitem(last=False)[1][1]
        return value


def list_tar_images(tar: Path) -> dict[str, tuple[int, int]]:
    """Key → (byte offset, size) of each sample's image in a tar, from its headers alone (the first of
    jpg, jpeg, png, webp a sample has, as extraction chose it)."""
    found: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(tar, "r:") as t:
            for m in t:
                match = _KEY.match(m.name) if m.isfile() else None
                if match and match.group(2) in IMAGE_EXTS:
                    found.setdefault(match.group(1), {})[match.group(2)] = (m.offset_data, m.size)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ClipsaeError(f"cannot list {tar}: {exc}") from None
    return {key: next(exts[e] for e in IMAGE_EXTS if e in exts) for key, exts in found.items()}


def model_view(im: Image.Image, preprocess: dict | None) -> Image.Image:
    """What the model saw of an image: the store's recorded resize (the shorter side to ``resize``, or to
    ``[h, w]``) then centre crop, so that a patch grid drawn over it falls on the patches the codes are of.
    Without a recorded geometry, the image as it is."""
    resize, crop = (preprocess or {}).get("resize"), (preprocess or {}).get("crop")
    if isinstance(resize, int):
        scale = resize / min(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
    elif isinstance(resize, (list, tuple)) and len(resize) == 2:
        im = im.resize((int(resize[1]), int(resize[0])), Image.Resampling.BICUBIC)
    if isinstance(crop, (list, tuple)) and len(crop) == 2:
        h, w = int(crop[0]), int(crop[1])
        left, top = round((im.width - w) / 2), round((im.height - h) / 2)
        im = im.crop((left, top, left + w, top + h))
    return im


class TarImages:
    """A store's images by global index, from the tars its parts name (or ``shards``, where they moved)."""

    def __init__(self, store: ActivationStore, shards: Path | None = None, thumbs_cached: int = 4096):
        self.store, self.shards = store, shards
        self.preprocess = store.config.get("preprocess")
        self._keys = store.keys()
        self._tars = LRU(256)
        self._thumbs = LRU(thumbs_cached, THUMBS_CACHED_BYTES, weight=len)

    def image_bytes(self, image: int) -> bytes:
        """The encoded bytes of store image ``image`` as the tar holds them."""
        if not 0 <= image < self.store.n_images:
            raise ClipsaeError(f"image {image} is out of range for a store of {self.store.n_images} images")
        part = self.store.parts[self.store.part_of(image)]
        tar = require_tar(part, self.shards)
        members = self._tars.get(tar) or self._tars.put(tar, list_tar_images(tar))
        key = str(self._keys[image])
        if key not in members:
            raise ClipsaeError(f"{tar} does not hold image {key!r} (part {part.name}); is it the tar the store was made from?")
        offset, size = members[key]
        with open(tar, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def image(self, image: int) -> Image.Image:
        """Store image ``image`` as RGB."""
        return decode_rgb(self.image_bytes(image))

    def thumbnail(self, image: int, size: int, whole: bool = False) -> bytes:
        """A JPEG of what the model saw of store image ``image`` (:func:`model_view`), or of the ``whole``
        image, its longest side ``size`` pixels (cached)."""
        cached = self._thumbs.get((image, size, whole))
        if cached is not None:
            return cached
        return self._thumbs.put((image, size, whole), jpeg(self.image(image), size, None if whole else self.preprocess))


def jpeg(im: Image.Image, size: int, preprocess: dict | None) -> bytes:
    """A JPEG of :func:`model_view` of ``im`` (``preprocess`` None: the whole image), its longest side ``size``."""
    im = model_view(im, preprocess)
    im.thumbnail((size, size), Image.Resampling.BICUBIC)
    if max(im.size) < size:  # small images are drawn at the size asked, as the grid over them is
        scale = size / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()
