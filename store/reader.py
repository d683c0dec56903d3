"""Reading a store: complete parts, in part-name order, seen as one array per hook."""

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.layout import HookLayout
from clipsae.store.location import check_reachable, store_path
from clipsae.store.parts import COMPLETE, DAMAGED, IN_PROGRESS, INTERRUPTED, complete_names, scan_parts
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
    """One stored chunk of a hook: global image rows ``start .. stop``, chunk ``index`` of ``part``."""

    part: int
    start: int
    stop: int
    index: int = 0

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RowBlock:
    """Consecutive rows of a hook in global order: row j is token ``tokens_M[j]`` of image ``images_M[j]``."""

    images_M: np.ndarray  # int64 global image indices
    tokens_M: np.ndarray  # int64 stored token positions
    acts_MD: np.ndarray


def recorded_checksums(attrs: dict, array: str) -> list[int] | None:
    """The CRC32C of each chunk of ``array`` that a part (or codes part) recorded, or None where
    it recorded none (parts written before store format 2, and their keys and labels)."""
    record = attrs.get(layout.CHUNKS, {}).get(array)
    return None if record is None else [int(c) for c in record["crc32c"]]


def _scan_parts(path: Path) -> tuple[list[tuple[str, dict]], list[str], list[str]]:
    """(complete (name, attrs) sorted by name, names in progress or interrupted, damaged names)."""
    states = scan_parts(path / layout.PARTS)
    return ([(p.name, p.attrs) for p in states if p.state == COMPLETE],
            [p.name for p in states if p.state in (IN_PROGRESS, INTERRUPTED)],
            [p.name for p in states if p.state == DAMAGED])


def complete_parts(path: str | Path) -> set[str]:
    """Names of the parts of the store at ``path`` that carry the complete marker."""
    return complete_names(store_path(path) / layout.PARTS)


class ActivationStore:
    """Read access to an activation store written by ``clipsae extract`` or ``write_store``.

    Image order is global: complete parts sorted by name, rows in write order within each.
    It does not depend on how many workers wrote the store, or in which order.
    """

    def __init__(self, path: Path, attrs: dict, parts: list[Part], incomplete: list[str], damaged: list[str]):
        self.path = path
        self.attrs = attrs
        self.parts = parts
        self.incomplete_parts = incomplete
        self.damaged_parts = damaged
        meta = attrs["clipsae"]
        self.format_version = int(meta.get("format_version", 1))
        self.config: dict = meta["config"]
        self.provenance: dict = meta.get("provenance", {})
        self._layouts = {h: HookLayout.from_json(h, v, self.format_version, self.config.get("tokens"))
                         for h, v in self.config["hooks"].items()}
        total = sum(p.n_images for p in parts)
        self._offsets = np.array([p.offset for p in parts] + [total], dtype=np.int64)
        self._arrays: dict[tuple[str, int], zb.Array] = {}

    @classmethod
    def open(cls, path: str | Path) -> "ActivationStore":
        """Open a store read-only; raises ClipsaeError if ``path`` is not one."""
        p = store_path(path)
        check_reachable(p)
        if not zb.is_node(p):
            raise ClipsaeError(f"{p} is not an activation store (no zarr.json)")
        attrs = zb.read_attributes(p)
        if attrs is None:
            raise ClipsaeError(f"{p / zb.META} is unreadable")
        meta = attrs.get("clipsae")
        if not isinstance(meta, dict) or "config" not in meta:
            raise ClipsaeError(f"{p} is a Zarr store but not a clipsae activation store")
        version = meta.get("format_version", 1)
        if version not in layout.READABLE_FORMATS:
            raise ClipsaeError(f"{p} is in store format {version}; this clipsae reads formats "
                               f"{', '.join(map(str, layout.READABLE_FORMATS))}: upgrade clipsae")
        complete, incomplete, damaged = _scan_parts(p)
        parts, offset = [], 0
        for name, a in complete:
            parts.append(Part(name, a.get("source", ""), int(a["n_images"]), offset, a))
            offset += int(a["n_images"])
        return cls(p, attrs, parts, incomplete, damaged)

    @property
    def hooks(self) -> list[str]:
        return list(self.config["hooks"])

    @property
    def n_images(self) -> int:
        return int(self._offsets[-1])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.config["dtype"])

    def layout(self, hook: str) -> HookLayout:
        """Shape and token layout of ``hook`` (whether token 0 is CLS, the patch grid)."""
        try:
            return self._layouts[hook]
        except KeyError:
            raise ClipsaeError(f"hook {hook!r} is not in {self.path}; it has {', '.join(self.hooks)}") from None

    def n_tokens(self, hook: str) -> int:
        return self.layout(hook).n_tokens

    def d(self, hook: str) -> int:
        return self.layout(hook).d

    def token_indices(self, hook: str, tokens: str) -> np.ndarray:
        """Stored token positions of ``hook`` that make up ``tokens`` (``cls``, ``patches`` or ``all``).

        A hook with one token per image (CLS only, or a pooled vector) serves ``cls`` and ``all``.
        """
        lay = self.layout(hook)
        n = lay.n_tokens
        if tokens == "all":
            return np.arange(n)
        if tokens == "cls":
            if n == 1 or lay.cls_token:
                return np.arange(1)
            regs = f"{lay.registers} registers and " if lay.registers else ""
            raise ClipsaeError(f"hook {hook} in {self.path} has no CLS token (its {n} tokens are {regs}patches); use "
                               f"--tokens patches or all, or a pooled hook")
        if tokens == "patches":
            if n == 1:
                raise ClipsaeError(f"hook {hook} in {self.path} has one token per image (CLS or pooled), no patches; use --tokens cls or all")
            return np.arange(lay.prefix, n)
        raise ClipsaeError(f"tokens must be one of {', '.join(layout.TOKEN_MODES)}, not {tokens!r}")

    def array(self, hook: str, part: int) -> zb.Array:
        """The array of ``hook`` in the ``part``-th complete part."""
        self.layout(hook)
        key = (hook, part)
        if key not in self._arrays:
            name = self.parts[part].name
            try:
                self._arrays[key] = zb.Array(self.path / layout.PARTS / name / layout.ACTS / hook,
                                             recorded_checksums(self.parts[part].attrs, hook))
            except FileNotFoundError:
                raise ClipsaeError(f"{self.path}: part {name} is marked complete but has no array for hook {hook}; "
                                   f"run `clipsae store verify {self.path}`") from None
        return self._arrays[key]

    def _part_file(self, part: Part, name: str) -> Path:
        return self.path / layout.PARTS / part.name / name

    @cached_property
    def _keys(self) -> np.ndarray:
        if not self.parts:
            return np.empty(0, dtype=str)
        return np.concatenate([self._read_small(p, layout.KEYS, zb.read_text) for p in self.parts]).astype(str)

    @cached_property
    def _labels(self) -> np.ndarray:
        if not self.parts:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([self._read_small(p, layout.LABELS, lambda f, crc: zb.Array(f, crc).read_all())
                               for p in self.parts]).astype(np.int64)

    def _read_small(self, part: Part, name: str, read) -> np.ndarray:
        """A part's keys or labels, checked against their recorded checksums; a lost, broken or
        altered array is a one-line error naming it."""
        try:
            return read(self._part_file(part, name), recorded_checksums(part.attrs, name))
        except (FileNotFoundError, zb.ChunkDamaged) as exc:
            raise ClipsaeError(f"{self.path}: part {part.name}: {name}: {exc}; run `clipsae store verify {self.path}`") from None

    def keys(self) -> np.ndarray:
        """Each image's webdataset ``__key__``, in global order."""
        return self._keys

    def positions_of(self, keys) -> np.ndarray:
        """The global index of the image with each key, −1 where the store holds none (a key the store repeats:
        its last image), by bisection over the keys sorted once per call."""
        want = np.asarray([str(k) for k in keys], dtype=str)
        mine = np.asarray(self._keys, dtype=str)
        if not len(mine) or not len(want):
            return np.full(len(want), -1, dtype=np.int64)
        order = np.argsort(mine, kind="stable")
        pos = np.clip(np.searchsorted(mine[order], want, side="right") - 1, 0, None)
        return np.where(mine[order][pos] == want, order[pos], -1).astype(np.int64)

    def images_of(self, keys) -> np.ndarray:
        """The global index of the image with each key; one line naming the first key the store lacks."""
        index = self.positions_of(keys)
        if (index < 0).any():
            raise ClipsaeError(f"{self.path} holds no image with key {list(keys)[int(np.argmax(index < 0))]!r}")
        return index

    def labels(self) -> np.ndarray:
        """Each image's integer label, -1 where the shard had none."""
        return self._labels

    def mask_classes(self) -> dict[int, str] | None:
        """Class index → name of the patch labels (0 = unlabelled), or None for a store without masks."""
        classes = self.config.get(layout.MASK_CLASSES)
        return None if classes is None else {int(k): v for k, v in classes.items()}

    def patch_grids(self) -> tuple[tuple[int, int], ...]:
        """The patch grids the store keeps labels at (none without masks)."""
        return () if self.mask_classes() is None else layout.patch_grids(self._layouts.values())

    def patch_grid(self, hook: str) -> tuple[int, int]:
        """The patch grid of ``hook`` whose labels the store keeps; one line where it keeps none."""
        grid = self.layout(hook).grid
        if self.mask_classes() is None:
            raise ClipsaeError(f"{self.path} holds no patch labels: extract from tars with segmentation masks "
                               f"(--mask-ext, --mask-classes) to get them")
        if grid is None:
            raise ClipsaeError(f"hook {hook} of {self.path} has no patch grid, so no patch labels")
        return grid

    def patch_labels(self, hook: str) -> tuple[np.ndarray, np.ndarray]:
        """Each image's patches' class and that class's share of the patch's pixels, at ``hook``'s grid:
        (labels (n_images, patches) uint16, shares (n_images, patches) float16), in global image order;
        each chunk checked against its recorded CRC32C."""
        name = layout.grid_name(self.patch_grid(hook))
        out = []
        for array in (layout.PATCH_LABELS, layout.PATCH_LABEL_SHARE):
            at = f"{array}/{name}"
            out.append(np.concatenate([self._read_small(p, at, lambda f, crc: zb.Array(f, crc).read_all())
                                       for p in self.parts]) if self.parts else np.empty((0, 0)))
        return out[0], out[1]

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

    def part_of(self, images):
        """The index in ``parts`` of the part holding each global image index (an int for an int)."""
        found = np.searchsorted(self._offsets, images, side="right") - 1
        return int(found) if np.ndim(found) == 0 else found

    def read(self, hook: str, images) -> np.ndarray:
        """Activations (len(images), n_tokens, d) for a slice or an index array, in that order."""
        idx = self._indices(images)
        out = np.empty((len(idx), self.n_tokens(hook), self.d(hook)), dtype=self.dtype)
        if not len(idx):
            return out
        part_of = self.part_of(idx)
        for part in np.unique(part_of):
            sel = np.flatnonzero(part_of == part)
            local = idx[sel] - self._offsets[part]
            rows = self.array(hook, int(part)).rows_per_chunk
            chunk_of = local // rows
            for c in np.unique(chunk_of):
                here = chunk_of == c
                block = self.read_chunk(hook, self._chunk(hook, int(part), int(c)))
                out[sel[here]] = block[local[here] - c * rows]
        return out

    def _chunk(self, hook: str, part: int, index: int) -> Chunk:
        p = self.parts[part]
        rows = self.array(hook, part).rows_per_chunk
        start = p.offset + index * rows
        return Chunk(part, start, min(start + rows, p.offset + p.n_images), index)

    def part_chunks(self, hook: str, part: int) -> list[Chunk]:
        """The stored chunks of ``hook`` in the ``part``-th complete part, in order."""
        rows = self.array(hook, part).rows_per_chunk
        return [self._chunk(hook, part, c) for c in range(-(-self.parts[part].n_images // rows))]

    def chunks(self, hook: str) -> list[Chunk]:
        """The stored chunks of ``hook``, in global order: the unit of efficient reading."""
        return [c for i in range(len(self.parts)) for c in self.part_chunks(hook, i)]

    def read_chunk(self, hook: str, chunk: Chunk) -> np.ndarray:
        """One chunk's activations (len(chunk), n_tokens, d), read as a single chunk file and
        checked against the CRC32C its part recorded.

        A chunk that a complete part should have and does not (lost or cut short), or whose bytes
        changed after it was written, raises a ClipsaeError: it is never used, nor read back as
        zarr's fill value.
        """
        arr = self.array(hook, chunk.part)
        base = self.parts[chunk.part].offset
        try:
            return arr.read_rows(chunk.start - base, chunk.stop - base)
        except zb.ChunkDamaged as exc:
            raise ClipsaeError(f"{self.path}: part {self.parts[chunk.part].name}, hook {hook}: {exc}; nothing was "
                               f"used from it; `clipsae store verify {self.path}` lists every damaged chunk") from None

    def iter_chunks(self, hook: str, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[Chunk, np.ndarray]]:
        """Yield ``(chunk, acts)`` for every chunk, in global order or a seeded random one."""
        chunks = self.chunks(hook)
        if shuffle:
            random.Random(seed).shuffle(chunks)
        for c in chunks:
            yield c, self.read_chunk(hook, c)

    def iter_rows(self, hook: str, tokens: str = "all") -> Iterator[RowBlock]:
        """Every row of ``hook`` (the ``tokens`` asked for) in global order, one chunk at a time.

        Memory stays at two chunks whatever the store's size: the next chunk is read on a
        background thread while the caller works on this one.
        """
        token_idx = self.token_indices(hook, tokens)
        chunks = self.chunks(hook)
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipsae-rows") as pool:
            pending = pool.submit(self.read_chunk, hook, chunks[0])
            for i, c in enumerate(chunks):
                acts_NTD = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(self.read_chunk, hook, chunks[i + 1])
                if len(token_idx) != acts_NTD.shape[1]:
                    acts_NTD = acts_NTD[:, token_idx]
                n, t = acts_NTD.shape[:2]
                yield RowBlock(np.repeat(np.arange(c.start, c.stop, dtype=np.int64), t),
                               np.tile(token_idx.astype(np.int64), n),
                               np.ascontiguousarray(acts_NTD).reshape(n * t, -1))

    def require_finite(self, hook: str) -> None:
        """Raise, naming the parts and their images, if extraction recorded non-finite values in ``hook``.

        The counts were taken as each part was written; a value changed afterwards is caught by the
        chunk checksums of every read instead.
        """
        bad = [(p, HookStats.from_json(p.attrs["hook_stats"][hook]).nonfinite) for p in self.parts
               if "hook_stats" in p.attrs and hook in p.attrs["hook_stats"]]
        bad = [(p, n) for p, n in bad if n]
        if bad:
            where = ", ".join(f"{p.name} (images {p.offset}-{p.offset + p.n_images - 1}: {n})" for p, n in bad[:3])
            raise ClipsaeError(
                f"hook {hook} of {self.path} holds {sum(n for _, n in bad)} non-finite values, recorded when "
                f"{len(bad)} part(s) were extracted: {where}{' and more' if len(bad) > 3 else ''}; float16 overflows "
                f"above 65504: extract the hook into a new store with --dtype float32, or use another hook")

    def hook_stats(self, hook: str) -> HookStats:
        """Statistics of ``hook`` over all complete parts, as recorded when they were written."""
        total = HookStats()
        for p in self.parts:
            total = total.merge(HookStats.from_json(p.attrs["hook_stats"][hook]))
        return total
