"""Reading a store: complete parts, in part-name order, seen as one array per hook."""

import json
import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr

from clipsae.errors import ClipsaeError
from clipsae.store import layout
from clipsae.store.stats import HookStats


@dataclass(frozen=True)
class Part:
    """A complete part: images ``offset .. offset + n_images`` in the store's global order."""

    name: str
    source: str
    n_images: int
    offset: int
    attrs: dict


@dataclass(frozen=True)
class Chunk:
    """One stored chunk of a hook: global image rows ``start .. stop`` inside ``part``."""

    part: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def _part_attrs(path: Path, name: str) -> dict | None:
    # Read the part's zarr.json ourselves: a writer killed mid-write can leave it torn,
    # and a torn part is simply an incomplete one.
    try:
        return json.loads((path / layout.PARTS / name / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        return None


def _is_raw(arr: zarr.Array) -> bool:
    """True when chunks are stored as plain little-endian bytes (no filters, no compression)."""
    return not arr.compressors and not arr.filters and getattr(arr.serializer, "endian", None) is not None \
        and arr.serializer.endian.value == "little"


def complete_parts(path: str | Path) -> set[str]:
    """Names of the parts of the store at ``path`` that carry the complete marker."""
    parts = Path(path) / layout.PARTS
    if not parts.is_dir():
        return set()
    return {x.name for x in parts.iterdir() if (_part_attrs(Path(path), x.name) or {}).get(layout.COMPLETE) is True}


class ActivationStore:
    """Read access to an activation store written by ``clipsae extract`` or ``write_store``.

    Image order is global: complete parts sorted by name, rows in write order within each.
    It does not depend on how many workers wrote the store, or in which order.
    """

    def __init__(self, path: Path, root: zarr.Group, parts: list[Part], incomplete: list[str]):
        self.path = path
        self.root = root
        self.parts = parts
        self.incomplete_parts = incomplete
        meta = root.attrs["clipsae"]
        self.config: dict = meta["config"]
        self.provenance: dict = meta.get("provenance", {})
        total = sum(p.n_images for p in parts)
        self._offsets = np.array([p.offset for p in parts] + [total], dtype=np.int64)
        self._arrays: dict[tuple[str, int], zarr.Array] = {}

    @classmethod
    def open(cls, path: str | Path) -> "ActivationStore":
        """Open a store read-only; raises ClipsaeError if ``path`` is not one."""
        p = Path(path)
        if not (p / "zarr.json").is_file():
            raise ClipsaeError(f"{p} is not an activation store (no zarr.json)")
        try:
            root = zarr.open_group(str(p), mode="r")
        except Exception as exc:
            raise ClipsaeError(f"{p} is not a readable Zarr store: {exc}") from exc
        if "clipsae" not in root.attrs:
            raise ClipsaeError(f"{p} is a Zarr store but not a clipsae activation store")
        names = sorted(x.name for x in (p / layout.PARTS).iterdir() if x.is_dir()) if (p / layout.PARTS).is_dir() else []
        parts, incomplete, offset = [], [], 0
        for name in names:
            attrs = _part_attrs(p, name)
            if not attrs or attrs.get(layout.COMPLETE) is not True:
                incomplete.append(name)
                continue
            parts.append(Part(name, attrs.get("source", ""), int(attrs["n_images"]), offset, attrs))
            offset += int(attrs["n_images"])
        return cls(p, root, parts, incomplete)

    @property
    def hooks(self) -> list[str]:
        return list(self.config["hooks"])

    @property
    def n_images(self) -> int:
        return int(self._offsets[-1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.config["dtype"])

    def _hook(self, hook: str) -> dict:
        try:
            return self.config["hooks"][hook]
        except KeyError:
            raise ClipsaeError(f"hook {hook!r} is not in {self.path}; it has {', '.join(self.hooks)}") from None

    def n_tokens(self, hook: str) -> int:
        return int(self._hook(hook)["n_tokens"])

    def d(self, hook: str) -> int:
        return int(self._hook(hook)["d"])

    def token_indices(self, hook: str, tokens: str) -> np.ndarray:
        """Stored token positions of ``hook`` that make up ``tokens`` (``cls``, ``patches`` or ``all``).

        A hook with one token per image (CLS only, or a pooled vector) serves ``cls`` and ``all``;
        a ViT hook stored with all tokens has the CLS token first; anything else is patches only.
        """
        n = self.n_tokens(hook)
        if tokens == "all":
            return np.arange(n)
        cls_first = n > 1 and "CLS then" in self._hook(hook).get("meaning", "")
        if tokens == "cls":
            if n == 1 or cls_first:
                return np.arange(1)
            raise ClipsaeError(f"hook {hook} in {self.path} has no CLS token (its {n} tokens are patches); use --tokens patches or all")
        if tokens == "patches":
            if n == 1:
                raise ClipsaeError(f"hook {hook} in {self.path} has one token per image (CLS or pooled), no patches; use --tokens cls or all")
            return np.arange(1, n) if cls_first else np.arange(n)
        raise ClipsaeError(f"tokens must be cls, patches or all, not {tokens!r}")

    def array(self, hook: str, part: int) -> zarr.Array:
        """The zarr array of ``hook`` in the ``part``-th complete part."""
        self._hook(hook)
        key = (hook, part)
        if key not in self._arrays:
            self._arrays[key] = self.root[f"{layout.PARTS}/{self.parts[part].name}/{layout.ACTS}/{hook}"]
        return self._arrays[key]

    def _concat(self, name: str, dtype) -> np.ndarray:
        if not self.parts:
            return np.empty(0, dtype=dtype)
        return np.concatenate(
            [np.asarray(self.root[f"{layout.PARTS}/{p.name}/{name}"][:], dtype=dtype) for p in self.parts]
        )

    @cached_property
    def _keys(self) -> np.ndarray:
        return self._concat(layout.KEYS, object).astype(str)

    @cached_property
    def _labels(self) -> np.ndarray:
        return self._concat(layout.LABELS, np.int64)

    def keys(self) -> np.ndarray:
        """Each image's webdataset ``__key__``, in global order."""
        return self._keys

    def labels(self) -> np.ndarray:
        """Each image's integer label, -1 where the shard had none."""
        return self._labels

    def sources(self) -> np.ndarray:
        """Each image's source tar, in global order."""
        return np.repeat(np.array([p.source for p in self.parts], dtype=object), [p.n_images for p in self.parts])

    def _indices(self, images) -> np.ndarray:
        if isinstance(images, slice):
            return np.arange(*images.indices(self.n_images))
        idx = np.asarray(images, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_images or idx.max() >= self.n_images):
            raise IndexError(f"image index out of range for a store of {self.n_images} images")
        return np.where(idx < 0, idx + self.n_images, idx)

    def read(self, hook: str, images) -> np.ndarray:
        """Activations (len(images), n_tokens, d) for a slice or an index array, in that order."""
        idx = self._indices(images)
        out = np.empty((len(idx), self.n_tokens(hook), self.d(hook)), dtype=self.dtype)
        if not len(idx):
            return out
        part_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for part in np.unique(part_of):
            sel = np.flatnonzero(part_of == part)
            local = idx[sel] - self._offsets[part]
            arr = self.array(hook, int(part))
            lo, hi = int(local.min()), int(local.max()) + 1
            if hi - lo == len(local) and np.all(np.diff(local) == 1):
                out[sel] = arr[lo:hi]
            else:
                order = np.argsort(local, kind="stable")
                out[sel[order]] = arr.oindex[local[order]]
        return out

    def chunks(self, hook: str) -> list[Chunk]:
        """The stored chunks of ``hook``, in global order: the unit of efficient reading."""
        out = []
        for i, p in enumerate(self.parts):
            rows = self.array(hook, i).chunks[0]
            for s in range(0, p.n_images, rows):
                out.append(Chunk(i, p.offset + s, p.offset + min(s + rows, p.n_images)))
        return out

    def read_chunk(self, hook: str, chunk: Chunk) -> np.ndarray:
        """One chunk's activations (len(chunk), n_tokens, d), read as a single chunk file."""
        base = self.parts[chunk.part].offset
        arr = self.array(hook, chunk.part)
        rows = arr.chunks[0]
        start = chunk.start - base
        path = layout.chunk_file(self.path, arr, start // rows)
        if _is_raw(arr) and start % rows == 0 and path.is_file():
            # An uncompressed chunk file is the raw C-order array: read it in one call
            # (zarr's decode path measured about 0.7x of a raw read here).
            return np.fromfile(path, dtype=arr.dtype.newbyteorder("<")).reshape(arr.chunks)[: len(chunk)]
        return arr[start : chunk.stop - base]

    def iter_chunks(self, hook: str, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Yield ``(chunk, acts)`` for every chunk, in global order or a seeded random one."""
        chunks = self.chunks(hook)
        if shuffle:
            random.Random(seed).shuffle(chunks)
        for c in chunks:
            yield c, self.read_chunk(hook, c)

    def hook_stats(self, hook: str) -> HookStats:
        """Statistics of ``hook`` over all complete parts, as recorded when they were written."""
        total = HookStats()
        for p in self.parts:
            total = total.merge(HookStats.from_json(p.attrs["hook_stats"][hook]))
        return total
