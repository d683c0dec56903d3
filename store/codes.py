"""SAE codes cached in a store, beside its activations: one codes part per store part.

The arrays of a codes part, and what each holds, are docs/store.md's "Codes" table, the normative
description; :data:`TOKEN_ARRAYS` … :data:`POSITION_ARRAYS` declare them here once (name, dtype,
shape), and tests/store/test_docs_tables.py holds the two together. The parts are written by the
protocol of store/parts.py, of which this module is the codes schema.
"""

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from clipsae.errors import ClipsaeError
from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.layout import ANALYSIS_SUFFIX
from clipsae.store.location import storage_of, store_path
from clipsae.store.parts import GroupSchema, WritingPart, complete_names, open_group
from clipsae.store.reader import ActivationStore, recorded_checksums

CODES = "codes"
CODES_GROUP = GroupSchema("clipsae_codes", 1, nested=None, noun="codes", have="the cached codes have", verb="were",
                          remedy="--name")

# name: (dtype, shape): n the part's images, T the encoded token positions, K the cap (``width``),
# E the part's per-image entries (the sum of image_counts), d_sae the latents, d the hook's width.
TOKEN_ARRAYS = {"token_latents": ("int32", "(n·T, K)"), "token_values": ("float32", "(n·T, K)"),
                "token_active": ("int32", "(n·T,)")}
COUNT_ARRAYS = {"image_counts": ("int32", "(n,)")}
IMAGE_ARRAYS = {"image_latents": ("int32", "(E,)"), "image_max": ("float32", "(E,)"),
                "image_argmax": ("int32", "(E,)"), "image_sum": ("float32", "(E,)"), "image_cls": ("float32", "(E,)")}
LATENT_ARRAYS = {"latent_tokens_fired": ("int64", "(d_sae,)"), "latent_images_fired": ("int64", "(d_sae,)"),
                 "latent_sum": ("float64", "(d_sae,)"), "latent_sumsq": ("float64", "(d_sae,)")}
POSITION_ARRAYS = {"position_sq_err": ("float64", "(T,)"), "position_x_sq": ("float64", "(T,)"),
                   "position_x_sum": ("float64", "(T, d)")}
PART_ARRAYS = {**TOKEN_ARRAYS, **COUNT_ARRAYS, **IMAGE_ARRAYS, **LATENT_ARRAYS, **POSITION_ARRAYS}
BY = ("max", "cls", "mean")
_ENTRY_CHUNK = 2**20  # entries per chunk of the per-image arrays (4 MiB)


def codes_dir(store: str | Path, name: str) -> Path:
    return store_path(store) / CODES / name


def default_analysis_dir(store: str | Path, name: str) -> Path:
    """Where ``clipsae analyze`` writes by default: a folder beside the codes it reads, or, for a
    store on an object store, ``<store name>-<codes>-analysis`` in the working directory (tables,
    plots and pages are for people to open here)."""
    store = store_path(store)
    if not storage_of(store).local:
        return Path(f"{store.name.removesuffix('.zarr')}-{name}{ANALYSIS_SUFFIX}")
    return store / CODES / f"{name}{ANALYSIS_SUFFIX}"


def codes_names(store: str | Path) -> list[str]:
    """The names of the codes cached in a store."""
    root = store_path(store) / CODES
    return [n for n in storage_of(root).list_dirs(root) if zb.is_node(root / n)]


def recorded_identity(store: str | Path, name: str) -> dict | None:
    """The identity that codes ``name`` of ``store`` record, or None where there are none."""
    return CODES_GROUP.identity((zb.read_attributes(codes_dir(store, name)) or {}).get(CODES_GROUP.attribute))


def open_codes(store: str | Path, name: str, identity: dict, provenance: dict) -> Path:
    """Create ``codes/<name>`` recording ``identity`` and ``provenance``, or open it if it has the same identity.

    A different identity (another SAE, hook, token set or cap under the same name) raises,
    naming every difference, and writes nothing. Workers racing to create it agree.
    """
    path = codes_dir(store, name)
    if not zb.is_node(path.parent):
        zb.create_root(path.parent, {})  # atomic: workers may race to make it
    open_group(path, CODES_GROUP, identity, provenance, f"codes {name!r} in {store}")
    return path


@dataclass
class CodesBlock:
    """The codes of a run of whole images, as the encoder hands them to :class:`CodesPartWriter`."""

    token_latents_RK: np.ndarray
    token_values_RK: np.ndarray
    token_active_R: np.ndarray
    image_counts_I: np.ndarray
    image_latents_E: np.ndarray
    image_max_E: np.ndarray
    image_argmax_E: np.ndarray
    image_sum_E: np.ndarray
    image_cls_E: np.ndarray | None

    def array(self, name: str) -> np.ndarray:
        """The block's rows of the codes array ``name`` (a field named for it and its shape)."""
        return next(getattr(self, f.name) for f in fields(self) if f.name.rsplit("_", 1)[0] == name)


@dataclass
class PartSums:
    """Per-latent and per-token-position sums over a part; parts add up to the store's."""

    latent_tokens_fired: np.ndarray
    latent_images_fired: np.ndarray
    latent_sum: np.ndarray
    latent_sumsq: np.ndarray
    position_sq_err: np.ndarray
    position_x_sq: np.ndarray
    position_x_sum: np.ndarray
    n_images: int = 0
    tokens_capped: int = 0

    @classmethod
    def zeros(cls, d_sae: int, n_positions: int, d: int) -> "PartSums":
        return cls(np.zeros(d_sae, np.int64), np.zeros(d_sae, np.int64), np.zeros(d_sae), np.zeros(d_sae),
                   np.zeros(n_positions), np.zeros(n_positions), np.zeros((n_positions, d)))

    def add(self, other: "PartSums") -> None:
        for name in (*LATENT_ARRAYS, *POSITION_ARRAYS):
            getattr(self, name).__iadd__(getattr(other, name))
        self.n_images += other.n_images
        self.tokens_capped += other.tokens_capped


class CodesPartWriter(WritingPart):
    """Writes the codes of one store part; nothing counts until :meth:`close` sets ``complete``."""

    def __init__(self, path: Path, part: str, n_images: int, n_positions: int, width: int, d_sae: int,
                 with_cls: bool):
        super().__init__(path, part)
        # An array's last chunk is stored at full size, so chunks are fitted to the part: a small
        # part must not cost megabytes per array. Per-image entries are bounded, not known, up front.
        rows = layout.fitted_rows(max(1, layout.TARGET_CHUNK_BYTES // (8 * width)), n_images * n_positions)
        entries = layout.fitted_rows(_ENTRY_CHUNK, n_images * min(n_positions * width, d_sae))
        for name, (dtype, _) in TOKEN_ARRAYS.items():
            self.appender(name, (width,) if name != "token_active" else (), rows, dtype)
        for name, (dtype, _) in COUNT_ARRAYS.items():
            self.appender(name, (), layout.fitted_rows(_ENTRY_CHUNK, n_images), dtype)
        self._image = [name for name in IMAGE_ARRAYS if with_cls or name != "image_cls"]
        for name in self._image:
            self.appender(name, (), entries, IMAGE_ARRAYS[name][0])

    def append(self, block: CodesBlock) -> None:
        for name in (*TOKEN_ARRAYS, *COUNT_ARRAYS, *self._image):
            self._appenders[name].append(block.array(name))

    def close(self, sums: PartSums) -> None:
        """Write the sums and the chunk records, then mark the part complete."""
        for name in (*LATENT_ARRAYS, *POSITION_ARRAYS):
            self.write_small(name, np.asarray(getattr(sums, name)))
        super().close({"n_images": sums.n_images, "tokens_capped": sums.tokens_capped})


@dataclass(frozen=True)
class ImageValues:
    """Per-image values of the active latents of consecutive images, in CSR form.

    Image ``images_I[i]`` (global index) has entries ``offsets[i]:offsets[i+1]`` of ``latents_E``
    (ascending), with value ``values_E`` (> 0) and the stored token position ``tokens_E``.
    """

    images_I: np.ndarray
    offsets: np.ndarray
    latents_E: np.ndarray
    values_E: np.ndarray
    tokens_E: np.ndarray

    @property
    def image_of_E(self) -> np.ndarray:
        return np.repeat(self.images_I, np.diff(self.offsets))


class Codes:
    """Read access to the codes ``name`` cached in ``store`` for every one of its complete parts.

    ``progress``: each pass of :meth:`iter_images` shows a bar (images, and their rate).
    """

    def __init__(self, store: ActivationStore, name: str, progress: bool = False):
        self.store, self.name, self.progress = store, name, progress
        self.path = codes_dir(store.path, name)
        attrs = zb.read_attributes(self.path) if zb.is_node(self.path) else None
        if attrs is None or CODES_GROUP.attribute not in attrs:
            have = codes_names(store.path)
            raise ClipsaeError(f"{store.path} has no codes named {name!r} "
                               f"({'it has ' + ', '.join(have) if have else 'it has none'}); run `clipsae encode` first")
        self.identity: dict = attrs[CODES_GROUP.attribute]
        done = complete_names(self.path / layout.PARTS)
        missing = [p.name for p in store.parts if p.name not in done]
        if missing:
            raise ClipsaeError(f"codes {name!r} cover {len(store.parts) - len(missing)} of the {len(store.parts)} parts of "
                               f"{store.path} (missing {missing[0]}{' and more' if len(missing) > 1 else ''}); "
                               f"rerun `clipsae encode` to finish them")
        self.hook: str = self.identity["hook"]
        self.token_positions = np.asarray(self.identity["token_positions"], dtype=np.int64)
        self.d_sae: int = int(self.identity["sae"]["d_sae"])
        self.width: int = int(self.identity["width"])
        self._part_attrs = [zb.read_attributes(self._part_dir(i)) for i in range(len(store.parts))]
        self._image_offsets: dict[int, np.ndarray] = {}
        self._arrays: dict[tuple[int, str], zb.Array] = {}

    def fingerprint(self) -> str:
        """A sha256 of what the codes are: their identity and every part's recorded attributes (sizes and
        each chunk's checksum), so that anything derived from them can tell whether they changed."""
        record = {"identity": self.identity, "parts": [[p.name, a] for p, a in zip(self.store.parts, self._part_attrs)]}
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def n_images(self) -> int:
        return self.store.n_images

    @property
    def n_positions(self) -> int:
        return len(self.token_positions)

    @property
    def has_cls(self) -> bool:
        return bool(self.identity["cls_encoded"])

    def _part_dir(self, i: int) -> Path:
        return self.path / layout.PARTS / self.store.parts[i].name

    def _array(self, i: int, name: str) -> zb.Array:
        # Opened once: its metadata does not change while the codes are read (an explorer reads image after image).
        if (i, name) in self._arrays:
            return self._arrays[i, name]
        try:
            return self._arrays.setdefault((i, name), zb.Array(self._part_dir(i) / name,
                                                               recorded_checksums(self._part_attrs[i], name)))
        except FileNotFoundError:
            raise ClipsaeError(f"codes {self.name!r}, part {self.store.parts[i].name}: {name} is missing; "
                               f"delete {self._part_dir(i)} and rerun `clipsae encode`") from None

    def _read(self, i: int, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        arr = self._array(i, name)
        try:
            if start is None:
                return arr.read_all()
            return arr.read_span(start, stop)
        except zb.ChunkDamaged as exc:
            raise ClipsaeError(f"codes {self.name!r}, part {self.store.parts[i].name}, {name}: {exc}; nothing was used "
                               f"from it; delete {self._part_dir(i)} and rerun `clipsae encode`") from None

    def sums(self) -> PartSums:
        """Per-latent and per-position sums over the whole store."""
        d = self.store.d(self.hook)
        total = PartSums.zeros(self.d_sae, self.n_positions, d)
        for i, part in enumerate(self.store.parts):
            one = PartSums(*(self._read(i, n) for n in (*LATENT_ARRAYS, *POSITION_ARRAYS)),
                           n_images=part.n_images, tokens_capped=int(self._part_attrs[i].get("tokens_capped", 0)))
            total.add(one)
        return total

    def _check_by(self, by: str) -> None:
        if by not in BY:
            raise ClipsaeError(f"--by must be one of {', '.join(BY)}, not {by!r}")
        if by == "cls" and not self.has_cls:
            raise ClipsaeError(f"codes {self.name!r} were not made on a CLS token; use --by max or mean")

    def _entries(self, i: int, by: str, lo: int, hi: int,
                 tokens: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(latents, per-image values by ``by``, tokens) of entries lo:hi of part i's per-image arrays; without
        ``tokens`` the argmax array is not read (None)."""
        latents = self._read(i, "image_latents", lo, hi)
        tokens = self._read(i, "image_argmax", lo, hi) if tokens else None
        if by == "max":
            values = self._read(i, "image_max", lo, hi)
        elif by == "mean":
            values = self._read(i, "image_sum", lo, hi) / np.float32(self.n_positions)
        else:
            values = self._read(i, "image_cls", lo, hi)
            tokens = np.zeros_like(latents) if tokens is not None else None
        return latents, values, tokens

    def _locate(self, image: int) -> tuple[int, int]:
        """(part, index within it) of a global image index; one line where it is out of range."""
        if not 0 <= image < self.n_images:
            raise ClipsaeError(f"image {image} is out of range for a store of {self.n_images} images")
        i = self.store.part_of(image)
        return i, image - self.store.parts[i].offset

    def image_values(self, image: int, by: str = "max") -> tuple[np.ndarray, np.ndarray]:
        """(latents, values > 0) of one image, as :meth:`iter_images` gives them, read without a pass."""
        self._check_by(by)
        i, local = self._locate(image)
        if i not in self._image_offsets:  # a part's offsets are read once: an explorer asks image after image
            self._image_offsets[i] = np.concatenate([[0], np.cumsum(self._read(i, "image_counts").astype(np.int64))])
        lo, hi = self._image_offsets[i][local:local + 2]
        latents, values, _ = self._entries(i, by, int(lo), int(hi), tokens=False)
        keep = values > 0
        return latents[keep].astype(np.int64), values[keep].astype(np.float32)

    def iter_images(self, by: str = "max", max_entries: int = _ENTRY_CHUNK) -> Iterator[ImageValues]:
        """Every image's per-latent values in global order, about ``max_entries`` entries at a time.

        ``by``: ``max`` (largest code over the image's tokens, at its token), ``cls`` (token 0's
        code) or ``mean`` (the mean over the image's encoded tokens, at the maximum's token).
        """
        self._check_by(by)
        with tqdm(total=self.n_images, unit="img", desc=f"codes {self.name}", disable=not self.progress,
                  dynamic_ncols=True) as bar:
            for block in self._iter_images(by, max_entries):
                yield block
                bar.update(len(block.images_I))

    def _iter_images(self, by: str, max_entries: int) -> Iterator[ImageValues]:
        for i in range(len(self.store.parts)):
            yield from self.iter_part_images(i, by, max_entries)

    def iter_part_images(self, i: int, by: str = "max", max_entries: int = _ENTRY_CHUNK) -> Iterator[ImageValues]:
        """:meth:`iter_images` over part ``i`` alone (global image indices), for passes that resume by part."""
        self._check_by(by)
        part = self.store.parts[i]
        counts = self._read(i, "image_counts").astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        start = 0
        while start < len(counts):
            # Whole images, about max_entries entries (at least one image).
            stop = max(start + 1, int(np.searchsorted(offsets, offsets[start] + max_entries, side="right")) - 1)
            stop = min(stop, len(counts))
            lo, hi = int(offsets[start]), int(offsets[stop])
            latents, values, tokens = self._entries(i, by, lo, hi)
            keep = values > 0
            local = offsets[start:stop + 1] - lo
            if not keep.all():
                kept = np.concatenate([[0], np.cumsum(keep)])
                local = kept[local]
                latents, values, tokens = latents[keep], values[keep], tokens[keep]
            yield ImageValues(np.arange(part.offset + start, part.offset + stop, dtype=np.int64), local,
                              latents.astype(np.int64), values.astype(np.float32), tokens.astype(np.int64))
            start = stop

    def iter_token_codes(self, images: Iterable[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(image, latents (T, K), values (T, K)) of each given image in ascending order; each chunk
        of the token arrays is read about once, however many of its images are asked for."""
        wanted = np.unique(np.asarray(list(images), dtype=np.int64))
        if len(wanted) and not (0 <= wanted[0] and wanted[-1] < self.n_images):
            bad = wanted[0] if wanted[0] < 0 else wanted[-1]
            raise ClipsaeError(f"image {bad} is out of range for a store of {self.n_images} images")
        offsets = np.array([p.offset for p in self.store.parts])
        t = self.n_positions
        for i in np.unique(np.searchsorted(offsets, wanted, side="right") - 1):
            part = self.store.parts[i]
            local = wanted[(wanted >= part.offset) & (wanted < part.offset + part.n_images)] - part.offset
            rows = max(self._array(i, "token_latents").rows_per_chunk, t)
            lo = hi = 0
            for img in local:
                start = int(img) * t
                if start + t > hi:
                    # Whole chunks from this image on: the next images asked for are likely in them.
                    lo, hi = start, min(((start + t - 1) // rows + 1) * rows, part.n_images * t)
                    lat, val = self._read(i, "token_latents", lo, hi), self._read(i, "token_values", lo, hi)
                yield int(img) + part.offset, lat[start - lo:start - lo + t], val[start - lo:start - lo + t]

    def iter_token_blocks(self, max_rows: int = _ENTRY_CHUNK) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first image's global index, latents (n·T, K), values (n·T, K)) of runs of whole images in
        global order, about ``max_rows`` token rows at a time; latent −1 means none."""
        t = self.n_positions
        for i, part in enumerate(self.store.parts):
            step = max(1, max_rows // t)
            for start in range(0, part.n_images, step):
                stop = min(start + step, part.n_images)
                yield (part.offset + start, self._read(i, "token_latents", start * t, stop * t),
                       self._read(i, "token_values", start * t, stop * t))

    def token_codes(self, image: int) -> tuple[np.ndarray, np.ndarray]:
        """(latents (T, K), values (T, K)) of one image's encoded tokens; latent −1 means none."""
        i, local = self._locate(image)
        start = local * self.n_positions
        stop = start + self.n_positions
        return self._read(i, "token_latents", start, stop), self._read(i, "token_values", start, stop)
