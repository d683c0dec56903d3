"""A group written in parts by independent workers: the one protocol activations and codes share.

docs/store.md ("Groups written in parts") is the normative description; this module is its code.
A group has an identity in its root's attributes (:class:`GroupSchema` says where), and a ``parts/``
group whose members each belong to one writer:

- :func:`open_group` creates the group, or opens it when its identity equals the caller's;
- :class:`WritingPart` writes a part: ``complete: false`` and ``started_by`` first, each array's
  chunks with their CRC32C, then the records and ``written_by``, then ``complete: true`` last, alone;
- :func:`scan_parts` classifies every part folder, and :func:`claim` gives a worker its share.

A part folder is in one of four states, the same for every reader of parts (the store reader,
extract, encode, ``status``, ``verify``):
- complete: its metadata says ``complete: true``; only such a part is ever read;
- in progress: its metadata exists without the marker, and its writer may still run;
- interrupted: the same, but the writer recorded in ``started_by`` was a process on this host that
  no longer runs (a writer elsewhere cannot be asked, so stays in progress);
- damaged: its metadata exists but cannot be read. Metadata is replaced atomically, so it was
  altered after it was written; nothing of the part is used, and a rerun rewrites it and says so.
A part folder with no metadata yet is in progress (its writer died, or is about to write it).
"""

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.location import storage_of

COMPLETE, IN_PROGRESS, INTERRUPTED, DAMAGED = "complete", "in progress", "interrupted", "damaged"
WRITTEN_BY = "written_by"
T = TypeVar("T")


@dataclass(frozen=True)
class GroupSchema:
    """Where one kind of parted group keeps its identity, and how it is named in messages.

    The root's attribute ``attribute`` holds ``format_version``, the identity and ``provenance``; the
    identity is the attribute's ``nested`` entry (activations: ``config``), or, where ``nested`` is
    None, every other entry beside those two (codes).
    """

    attribute: str
    format_version: int
    nested: str | None
    noun: str  # what the group is called in a refusal: "activation store", "codes"
    have: str  # how a refusal introduces the recorded values: "store has", "the cached codes have"
    verb: str  # "was" or "were", after the group's description
    remedy: str  # the option that picks another group: "--store", "--name"

    def record(self, identity: dict, provenance: dict) -> dict:
        if self.nested is None:
            return {"format_version": self.format_version, **identity, "provenance": provenance}
        return {"format_version": self.format_version, self.nested: identity, "provenance": provenance}

    def identity(self, record) -> dict | None:
        """The identity recorded in the attribute's value ``record``; None where it holds none."""
        if not isinstance(record, dict):
            return None
        if self.nested is None:
            return {k: v for k, v in record.items() if k not in ("format_version", "provenance")}
        return record.get(self.nested) if isinstance(record.get(self.nested), dict) else None


def config_differences(existing: Mapping, wanted: Mapping, have: str = "store has", want: str = "this run has") -> list[str]:
    """Human-readable differences between a recorded identity and a new run's."""
    diffs = []
    for key in sorted(set(existing) | set(wanted)):
        a, b = existing.get(key), wanted.get(key)
        if a != b:
            if key == "hooks" and isinstance(a, dict) and isinstance(b, dict) and sorted(a) != sorted(b):
                a, b = sorted(a), sorted(b)
            diffs.append(f"{key}: {have} {a!r}, {want} {b!r}")
    return diffs


def open_group(path: Path, schema: GroupSchema, identity: dict, provenance: dict, described: str,
               comparable: Callable[[dict, int], dict] = lambda identity, version: identity) -> dict:
    """Create the group at ``path`` recording ``identity``, or open it when it records the same one;
    returns the recorded attribute.

    A different identity raises, naming every difference, and writes nothing. Workers racing to create
    the group agree: it appears whole or not at all (zarr_backend.create_root). ``comparable`` maps an
    identity and its format version to today's form before they are compared (activations: format-1 hooks).
    ``described`` names the group in messages ("store acts.zarr", "codes 'x' in acts.zarr").
    """
    identity = json.loads(json.dumps(identity))  # so that tuples compare equal to stored lists
    if not zb.is_node(path):
        zb.create_root(path, {schema.attribute: schema.record(identity, provenance)}, subgroups=(layout.PARTS,))
    record = (zb.read_attributes(path) or {}).get(schema.attribute)
    have = schema.identity(record)
    if have is None:
        raise ClipsaeError(f"{path} is a Zarr group but holds no clipsae {schema.noun}; use another {schema.remedy}")
    version = int(record.get("format_version", 1))
    diffs = config_differences(comparable(have, version), comparable(identity, schema.format_version),
                               have=schema.have)
    if diffs:
        raise ClipsaeError(f"{described} {schema.verb} made differently ({'; '.join(diffs)}); use another {schema.remedy}")
    zb.require_group(path / layout.PARTS)
    return record


def writer_identity() -> dict:
    """Who wrote a part and when: host, process, time, and the Slurm job (``1234_5`` for an array task)."""
    who = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        who["slurm_job"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    elif "SLURM_JOB_ID" in env:
        who["slurm_job"] = env["SLURM_JOB_ID"]
    return who


class ArrayAppender:
    """Appends rows to a new array, writing each chunk once and whole, and records each chunk's CRC32C.

    ``row_shape`` is the shape of one row; the array grows along its first axis. Nothing is
    complete until :meth:`close`, which writes the last (short) chunk and sets the length.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...], rows_per_chunk: int, dtype: str,
                 compression: str = "none", fill_value=0):
        self.dtype = np.dtype(dtype)
        self.array = zb.create_array(path, (0, *row_shape), (rows_per_chunk, *row_shape), dtype, compression, fill_value)
        self._pending: list[np.ndarray] = []
        self.n_rows = 0
        self.crc32c: list[int] = []

    @property
    def rows_per_chunk(self) -> int:
        return self.array.rows_per_chunk

    def append(self, block: np.ndarray) -> None:
        """Add rows; whole chunks are written now, the rest is copied and kept for the next call,
        so the caller may reuse ``block``'s memory as soon as this returns."""
        self._pending.append(np.ascontiguousarray(block, dtype=self.dtype))
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        pending = self._pending
        rows = self.rows_per_chunk
        n = sum(len(b) for b in pending)
        take = n if final else (n // rows) * rows
        if take == 0:
            # Keep nothing that may be the caller's array (ascontiguousarray returns it as it is
            # when it can): the caller may reuse its memory once append returns.
            if pending:
                pending[-1] = pending[-1].copy()
            return
        # Only the rows that complete the leftover's chunk are copied; whole chunks are
        # written straight from the new batch (copying a batch costs as much as writing it).
        new = pending[-1]
        head = new[:0]
        if len(pending) > 1:
            lead = np.concatenate(pending[:-1])
            fill = min(len(new), -len(lead) % rows)
            head, new = np.concatenate([lead, new[:fill]]), new[fill:]
        self._write_chunks(head)
        self._write_chunks(new[: take - len(head)])
        rest = new[take - len(head):]
        self._pending = [rest.copy()] if len(rest) else []

    def _write_chunks(self, block: np.ndarray) -> None:
        """Write whole chunks (the last may be short) from ``block``, which starts on a chunk boundary."""
        rows = self.rows_per_chunk
        for s in range(0, len(block), rows):
            chunk = block[s : s + rows]
            self.array.write_chunk(self.n_rows // rows, chunk)
            self.crc32c.append(zb.chunk_checksum(chunk))
            self.n_rows += len(chunk)

    def close(self) -> dict:
        """Write what is buffered and fix the length; returns the record a part keeps (rows, crc32c)."""
        self._flush(final=True)
        self.array.set_length(self.n_rows)
        return {"rows": self.rows_per_chunk, "crc32c": self.crc32c}


class WritingPart:
    """One part being written, by the one writer that owns it; nothing in it counts until :meth:`close`.

    Creating it replaces whatever the folder held and records ``complete: false`` with ``attrs`` and
    ``started_by``. Arrays are added with :meth:`appender` (written a chunk at a time) or
    :meth:`write_small` and :meth:`write_text` (one chunk); each one's chunk record goes into the
    part's ``chunks`` attribute, under the array's name, in the order the arrays were added.
    """

    def __init__(self, group: Path, name: str, attrs: Mapping | None = None):
        self.name = name
        self.dir = group / layout.PARTS / name
        zb.create_group(self.dir, {layout.COMPLETE: False, **(attrs or {}), layout.STARTED_BY: writer_identity()})
        self._appenders: dict[str, ArrayAppender] = {}
        self._records: dict[str, dict] = {}

    def appender(self, name: str, row_shape: tuple[int, ...], rows_per_chunk: int, dtype: str,
                 compression: str = "none", at: str | None = None) -> ArrayAppender:
        """A new array ``name`` (stored at ``at``, a path inside the part; default ``name``) to append rows to."""
        self._appenders[name] = ArrayAppender(self.dir / (at or name), row_shape, rows_per_chunk, dtype, compression)
        return self._appenders[name]

    def write_small(self, name: str, values: np.ndarray, fill_value=0) -> None:
        """Store a small array as one chunk."""
        self._records[name] = zb.write_small(self.dir / name, values, fill_value=fill_value)

    def write_text(self, name: str, values: Sequence[str]) -> None:
        """Store strings as a core-specification array (zarr_backend.write_text)."""
        self._records[name] = zb.write_text(self.dir / name, list(values))

    def close(self, attrs: Mapping) -> None:
        """Finish every array, record ``attrs``, the chunk records and ``written_by``, then mark the part complete."""
        chunks = {name: a.close() for name, a in self._appenders.items()} | self._records
        zb.update_attributes(self.dir, {**attrs, layout.CHUNKS: chunks, WRITTEN_BY: writer_identity()})
        # The marker goes last and alone: a reader trusts nothing of a part before it.
        zb.update_attributes(self.dir, {layout.COMPLETE: True})


@dataclass(frozen=True)
class PartState:
    """One part folder's state; ``attrs`` its metadata's attributes (None where unreadable or absent)."""

    name: str
    state: str
    attrs: dict | None = None

    @property
    def started_by(self) -> dict | None:
        return (self.attrs or {}).get(layout.STARTED_BY)


def writer_alive(started_by: dict | None) -> bool | None:
    """Whether a part's writer still runs: known only for a process on this host."""
    if not started_by or started_by.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(started_by["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return None
    return True


def scan_parts(parts_dir: Path) -> list[PartState]:
    """Every part under ``parts_dir``, in name order, with its state (see the module's rules)."""
    storage = storage_of(parts_dir)
    names = storage.list_dirs(parts_dir)
    out = []
    for name, meta in zip(names, storage.map_reads(zb.read_metadata, [parts_dir / n for n in names])):
        attrs = zb.attributes_of(meta)
        if attrs is None:
            out.append(PartState(name, DAMAGED if zb.is_node(parts_dir / name) else IN_PROGRESS))
        elif attrs.get(layout.COMPLETE) is True:
            out.append(PartState(name, COMPLETE, attrs))
        else:
            out.append(PartState(name, INTERRUPTED if writer_alive(attrs.get(layout.STARTED_BY)) is False
                                 else IN_PROGRESS, attrs))
    return out


def complete_names(parts_dir: Path) -> set[str]:
    """Names of the complete parts under ``parts_dir``."""
    return {p.name for p in scan_parts(parts_dir) if p.state == COMPLETE}


def task_of(position: int, n_tasks: int) -> int:
    """The worker (array task) that owns the part at ``position`` of the planned list: every
    ``n_tasks``-th part, so the share depends only on the list and the worker count."""
    return position % n_tasks


@dataclass
class Claim:
    """A worker's share of a group's parts: what it writes (``todo``), what was already complete
    (``skipped``), and which of ``todo`` a rerun rewrites because their metadata was damaged."""

    todo: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)


def claim(items: Sequence[T], name_of: Callable[[T], str], parts_dir: Path, n_workers: int, index: int) -> Claim:
    """Worker ``index`` of ``n_workers``'s share of ``items`` (each the source of the part ``name_of`` it),
    with the parts under ``parts_dir`` that are complete left out."""
    states = {p.name: p.state for p in scan_parts(parts_dir)}
    mine = [item for i, item in enumerate(items) if task_of(i, n_workers) == index]
    out = Claim()
    for item in mine:
        state = states.get(name_of(item))
        (out.skipped if state == COMPLETE else out.todo).append(item)
        if state == DAMAGED:
            out.damaged.append(name_of(item))
    return out
