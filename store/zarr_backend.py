"""Everything in clipsae that knows Zarr: the v3 format on disk and zarr-python's API.

No other module imports zarr or parses a ``zarr.json``. Two rules keep the store working
across zarr releases:

- Fast paths (a chunk read or written as one file) are chosen from an array's metadata as the
  Zarr v3 specification writes it on disk: a regular chunk grid, the ``default`` or ``v2``
  chunk key encoding, and a single ``bytes`` codec in little-endian order (or no endianness,
  for one-byte types). Such a chunk file is exactly the chunk's C-order bytes. Anything else
  is read and written through zarr-python's public API, which is slower but always right.
- Text (image keys) is stored as a core-specification data type, UTF-8 bytes in a
  ``uint8`` array of shape (n, width) padded with zero bytes, so any Zarr v3 implementation
  reads it. Stores written before format 2 hold zarr-python's ``string`` extension type, which
  is read through zarr-python.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
import zarr.codecs
import zarr.errors

from clipsae.store.location import read_bytes, storage_of, store_path

META = "zarr.json"


def read_metadata(node: Path) -> dict | None:
    """A node's ``zarr.json`` as a dict; None when it is missing or unreadable (a torn write)."""
    try:
        meta = json.loads(read_bytes(store_path(node) / META))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def attributes_of(meta: dict | None) -> dict | None:
    """The user attributes in a node's metadata, or None when the metadata is missing or unreadable."""
    if meta is None or not isinstance(meta.get("attributes", {}), dict):
        return None
    return meta.get("attributes", {})


def read_attributes(node: Path) -> dict | None:
    """A node's user attributes, or None when its metadata is missing or unreadable."""
    return attributes_of(read_metadata(node))


def is_node(path: Path) -> bool:
    """True when ``path`` holds a Zarr v3 node (a ``zarr.json``)."""
    return (store_path(path) / META).is_file()


@dataclass(frozen=True)
class KeyEncoding:
    """A chunk key encoding the specification defines: ``default`` ("c/1/0") or ``v2`` ("1.0")."""

    name: str
    separator: str

    def key(self, coords: tuple[int, ...]) -> str:
        """The chunk's key: its path relative to the array."""
        if self.name == "default":
            return self.separator.join(("c", *map(str, coords)))
        return self.separator.join(map(str, coords)) if coords else "0"


def key_encoding(meta: dict) -> KeyEncoding | None:
    """The array's chunk key encoding, or None if it is not one the specification defines."""
    enc = meta.get("chunk_key_encoding")
    if not isinstance(enc, dict) or enc.get("name") not in ("default", "v2"):
        return None
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc["name"] == "default" else ".")
    return KeyEncoding(enc["name"], sep) if sep in ("/", ".") else None


@dataclass(frozen=True)
class RawChunks:
    """The on-disk form of an array whose chunk files are plain little-endian C-order bytes."""

    dtype: np.dtype
    chunk_shape: tuple[int, ...]

    @property
    def chunk_nbytes(self) -> int:
        return math.prod(self.chunk_shape) * self.dtype.itemsize


_PLAIN_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64"}


def _plain_type(meta: dict) -> np.dtype | None:
    """The array's NumPy type when it is a core fixed-size type (extension types are JSON objects)."""
    dt = meta.get("data_type")
    return np.dtype(dt) if isinstance(dt, str) and dt in _PLAIN_TYPES else None


def raw_chunks(meta: dict) -> RawChunks | None:
    """How to read the chunks of the array described by ``meta`` directly, or None if we can't.

    ``meta`` is the array's ``zarr.json`` as the Zarr v3 specification defines it.
    """
    try:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers"):
            return None
        dtype = _plain_type(meta)
        if dtype is None or key_encoding(meta) is None:
            return None
        grid = meta["chunk_grid"]
        if grid.get("name") != "regular":
            return None
        codecs = meta["codecs"]
        if len(codecs) != 1 or codecs[0].get("name") != "bytes":
            return None
        if dtype.itemsize > 1 and (codecs[0].get("configuration") or {}).get("endian") != "little":
            return None
        return RawChunks(dtype.newbyteorder("<"), tuple(int(c) for c in grid["configuration"]["chunk_shape"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class ChunkDamaged(Exception):
    """A chunk that should exist is lost, cut short, undecodable, or not the bytes that were written."""


def chunk_checksum(rows: np.ndarray) -> int:
    """CRC32C of a chunk's rows (those inside the array) as little-endian C-order bytes."""
    view = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<")).view()
    view.flags.writeable = False  # google_crc32c reads read-only buffers without a copy
    return int(google_crc32c.value(view))


class Array:
    """One array of a local store, read and written chunk by chunk along its first axis.

    ``raw`` is set when the chunk files can be read and written directly (see the module's
    docstring); otherwise zarr-python does the work. ``crc32c``, each chunk's checksum as
    recorded when it was written, makes every read check the chunk it reads (whole, every time,
    whatever rows are asked for) and raise ChunkDamaged where it differs.
    """

    def __init__(self, path: Path, crc32c: list[int] | None = None):
        self.path = store_path(path)
        meta = read_metadata(self.path)
        if meta is None or meta.get("node_type") != "array":
            raise FileNotFoundError(f"no Zarr array at {self.path}")
        self.meta = meta
        self.shape = tuple(int(s) for s in meta["shape"])
        self.raw = raw_chunks(meta)
        self.encoding = key_encoding(meta)
        self.dtype = _plain_type(meta)
        grid = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        self.chunks = tuple(int(c) for c in grid) if grid else self.shape
        self.crc32c = crc32c
        self.storage = storage_of(self.path)
        self._zarr = None

    @property
    def zarr_array(self) -> zarr.Array:
        if self._zarr is None:
            self._zarr = zarr.open_array(str(self.path), mode="r+" if self.storage.writable(self.path) else "r")
        return self._zarr

    @property
    def rows_per_chunk(self) -> int:
        return self.chunks[0]

    @property
    def n_chunks(self) -> int:
        return -(-self.shape[0] // self.rows_per_chunk) if self.shape[0] else 0

    def chunk_file(self, i: int) -> Path | None:
        """Where chunk ``i`` (along the first axis) lies, when the key encoding is one we know."""
        if self.encoding is None:
            return None
        return self.path / self.encoding.key((i,) + (0,) * (len(self.shape) - 1))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``, which must lie inside one chunk; a damaged chunk raises ChunkDamaged."""
        i = start // self.rows_per_chunk
        lo = i * self.rows_per_chunk
        whole = self._read_whole_chunk(i, lo)
        if self.crc32c is not None:
            self._check(i, whole[: min(self.rows_per_chunk, self.shape[0] - lo)])
        return whole[start - lo : stop - lo]

    def _check(self, i: int, rows: np.ndarray) -> None:
        if len(self.crc32c) != self.n_chunks:
            raise ChunkDamaged(f"{self.n_chunks} chunks, but the part recorded {len(self.crc32c)} checksums")
        if chunk_checksum(rows) != self.crc32c[i]:
            raise ChunkDamaged(f"chunk {i} was altered after it was written (CRC32C differs)")

    def _read_whole_chunk(self, i: int, lo: int) -> np.ndarray:
        """Chunk ``i``'s rows from ``lo``: the chunk's full stored shape on the raw paths, the rows
        inside the array through zarr-python."""
        f = self.chunk_file(i)
        if self.raw is None:
            if f is not None and not f.exists():
                raise ChunkDamaged(f"chunk {i} is missing ({f})")
            try:
                return np.asarray(self.zarr_array[lo : lo + self.rows_per_chunk])
            except Exception as exc:  # a damaged compressed chunk fails in zarr's decoder
                raise ChunkDamaged(f"chunk {i} cannot be decoded ({type(exc).__name__}: {exc})") from None
        try:
            data = self.storage.read_array(f, self.raw.dtype)
        except FileNotFoundError:
            raise ChunkDamaged(f"chunk {i} is missing ({f})") from None
        if data.nbytes != self.raw.chunk_nbytes:
            raise ChunkDamaged(f"chunk {i} has {data.nbytes} bytes, expected {self.raw.chunk_nbytes} ({f})")
        return data.reshape(self.raw.chunk_shape)

    def read_span(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` across as many chunks as they cover; a damaged chunk raises ChunkDamaged."""
        rows = self.rows_per_chunk
        if stop <= start:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        pieces = []
        for i in range(start // rows, (stop - 1) // rows + 1):
            lo = i * rows
            pieces.append(self.read_rows(max(start, lo), min(stop, lo + rows)))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def read_chunk(self, i: int) -> np.ndarray:
        """Chunk ``i``'s rows inside the array's shape."""
        start = i * self.rows_per_chunk
        return self.read_rows(start, min(start + self.rows_per_chunk, self.shape[0]))

    def write_chunk(self, i: int, block: np.ndarray) -> None:
        """Write chunk ``i`` whole: ``block`` holds its rows (the last chunk may be short).

        On the raw path the file is the chunk's C-order bytes, a short chunk padded with zeros
        to full size as the specification requires; zarr's own path measured 0.13-0.5x
        ``numpy.tofile`` here. The file needs no atomic rename: nothing in a part counts
        before its marker.
        """
        rows = self.rows_per_chunk
        if self.raw is None:
            arr = self.zarr_array
            end = i * rows + len(block)
            if end > arr.shape[0]:
                arr.resize((end, *arr.shape[1:]))
                self.shape = (end, *self.shape[1:])
            arr[i * rows : end] = block
            return
        if len(block) < rows:
            pad = np.zeros((rows - len(block), *block.shape[1:]), dtype=block.dtype)
            block = np.concatenate([block, pad])
        f = self.chunk_file(i)
        self.storage.write_bytes(f, memoryview(np.ascontiguousarray(block, dtype=self.raw.dtype)).cast("B"))

    def set_length(self, n: int) -> None:
        """Set the first axis's length (after direct chunk writes), through zarr-python."""
        if self.shape[0] != n:
            arr = self.zarr_array
            arr.resize((n, *arr.shape[1:]))
            self.shape = (n, *self.shape[1:])

    def read_all(self) -> np.ndarray:
        """The whole array, chunk by chunk (for small arrays such as labels)."""
        if not self.shape[0]:
            return np.empty(self.shape, dtype=self.dtype)
        return np.concatenate([self.read_chunk(i) for i in range(self.n_chunks)])


def _compressors(compression: str):
    return None if compression == "none" else [zarr.codecs.ZstdCodec(level=1)]


def create_root(path: Path, attributes: dict, subgroups: tuple[str, ...] = ()) -> bool:
    """Create a group at ``path`` with ``attributes`` and empty ``subgroups``, all at once where the
    storage allows it (location.Storage.create_whole). Returns False when another process created it first."""
    path = store_path(path)

    def make(at: Path) -> None:
        group = zarr.create_group(str(at), attributes=attributes)
        for name in subgroups:
            group.create_group(name)

    try:
        return storage_of(path).create_whole(path, make)
    except zarr.errors.ContainsGroupError:
        return False  # another worker's check passed at the same moment; its root stands


def update_attributes(node: Path, attributes: dict) -> None:
    """Merge ``attributes`` into a group's; zarr writes the metadata file atomically."""
    zarr.open_group(str(node), mode="r+").attrs.update(attributes)


def require_group(path: Path) -> None:
    """Make ``path`` a group if it is not one, keeping whatever it already holds."""
    try:
        zarr.open_group(str(path), mode="a")
    except zarr.errors.ContainsGroupError:
        pass  # made by another process between zarr's own check and its write


def remove_node(path: Path) -> None:
    """Delete the node at ``path`` and everything under it, if it exists."""
    path = store_path(path)
    storage_of(path).remove(path)


def create_group(path: Path, attributes: dict) -> None:
    """Create a group, replacing whatever node was at ``path``."""
    remove_node(path)
    zarr.create_group(str(store_path(path)), attributes=attributes)


def create_array(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str,
                 compression: str = "none", fill_value=0) -> Array:
    """Create an array (plain ``bytes`` codec unless compressed, default chunk keys)."""
    # Every chunk is written, even one equal to the fill value, so a missing chunk always means lost data.
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, compressors=_compressors(compression),
                      fill_value=fill_value, config={"write_empty_chunks": True})
    return Array(path)


def write_text(path: Path, values: list[str]) -> dict:
    """Store strings as UTF-8 in a (n, width) ``uint8`` array, zero-padded: a core-spec type.

    Returns the array's chunk record (rows per chunk, each chunk's CRC32C), as a part keeps it.
    """
    encoded = [v.encode("utf-8") for v in values]
    width = max([len(b) for b in encoded] + [1])
    buf = np.zeros((len(encoded), width), dtype=np.uint8)
    for i, b in enumerate(encoded):
        buf[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return write_small(path, buf)


def write_small(path: Path, values: np.ndarray, fill_value=0) -> dict:
    """Store a small array as one chunk; returns its chunk record (rows per chunk, CRC32C)."""
    arr = create_array(path, values.shape, (max(len(values), 1), *values.shape[1:]), values.dtype.name,
                       fill_value=fill_value)
    if len(values):
        arr.write_chunk(0, values)
    return {"rows": arr.rows_per_chunk, "crc32c": [chunk_checksum(values)] if len(values) else []}


def read_text(path: Path, crc32c: list[int] | None = None) -> np.ndarray:
    """Strings written by :func:`write_text` (checked against ``crc32c`` when given), or by
    zarr-python's ``string`` type (format 1)."""
    meta = read_metadata(path)
    if meta is None:
        raise FileNotFoundError(f"no Zarr array at {path}")
    if meta.get("data_type") == "uint8":
        buf = Array(path, crc32c).read_all()
        return np.array([bytes(row).rstrip(b"\0").decode("utf-8") for row in buf], dtype=str) if len(buf) \
            else np.empty(0, dtype=str)
    return np.asarray(zarr.open_array(str(path), mode="r")[...], dtype=object).astype(str)


def zarr_version() -> str:
    """The zarr-python release in use, for provenance."""
    return zarr.__version__
