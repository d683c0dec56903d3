"""Writing a store: the root with its identity, and parts that each belong to one writer.

Zarr loses data silently when two writers touch one chunk, so the unit of ownership is a
whole part (its own arrays). A part is valid only once its ``complete`` attribute is set,
which is the last thing written; a rerun deletes and rewrites any part that lacks it. The part
records each chunk's CRC32C, so ``verify`` finds a chunk lost, cut short or altered later.
"""

import json
import os
import socket
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.layout import HookLayout
from clipsae.store.location import check_reachable, store_path
from clipsae.store.stats import HookStats


def check_store_path(path: str | Path) -> None:
    """Refuse a store path that is a file, or a directory that is not a clipsae store."""
    p = store_path(path)
    if p.is_file():
        raise ClipsaeError(f"store path {p} is a file, not a store directory")
    if p.is_dir() and any(p.iterdir()):
        if not zb.is_node(p):
            raise ClipsaeError(f"{p} exists and is not a Zarr store; choose an empty or new --store")
        attrs = zb.read_attributes(p)
        if attrs is None:
            raise ClipsaeError(f"{p / zb.META} is unreadable")
        if "clipsae" not in attrs:
            raise ClipsaeError(f"{p} is a Zarr store but not a clipsae activation store")


def config_differences(existing: Mapping, wanted: Mapping, have: str = "store has", want: str = "this run has") -> list[str]:
    """Human-readable differences between a recorded identity (a store's) and a new run's."""
    diffs = []
    for key in sorted(set(existing) | set(wanted)):
        a, b = existing.get(key), wanted.get(key)
        if a != b:
            if key == "hooks" and isinstance(a, dict) and isinstance(b, dict) and sorted(a) != sorted(b):
                a, b = sorted(a), sorted(b)
            diffs.append(f"{key}: {have} {a!r}, {want} {b!r}")
    return diffs


def _current_config(config: dict, version: int) -> dict:
    """A config with its hooks in today's form, so a format-1 store compares equal to a new run."""
    config = dict(config)
    config["hooks"] = {h: HookLayout.from_json(h, v, version, config.get("tokens")).to_json()
                       for h, v in config.get("hooks", {}).items()}
    return config


def open_root(path: str | Path, config: dict, provenance: dict) -> Path:
    """Create the store root, or open an existing one whose identity equals ``config``.

    ``config`` is what makes two runs compatible (model, weights, hooks, tokens, dtype,
    preprocessing); a mismatch raises, naming every difference, and writes nothing.
    Concurrent workers may race to create the root: it appears whole or not at all.
    """
    path = store_path(path)
    check_store_path(path)
    check_reachable(path)
    config = json.loads(json.dumps(config))  # so that tuples compare equal to stored lists
    provenance = {**provenance, "zarr_version": zb.zarr_version(), "numpy_version": np.__version__}
    attrs = {"clipsae": {"format_version": layout.FORMAT_VERSION, "config": config, "provenance": provenance}}
    if not zb.is_node(path):
        zb.create_root(path, attrs, subgroups=(layout.PARTS,))
    meta = (zb.read_attributes(path) or {}).get("clipsae")
    if not isinstance(meta, dict) or "config" not in meta:
        raise ClipsaeError(f"{path} is a Zarr group but not a clipsae activation store")
    existing = _current_config(meta["config"], int(meta.get("format_version", 1)))
    diffs = config_differences(existing, _current_config(config, layout.FORMAT_VERSION))
    if diffs:
        raise ClipsaeError(f"store {path} was made differently ({'; '.join(diffs)}); use another --store")
    zb.require_group(path / layout.PARTS)
    return path


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


class PartWriter:
    """Writes one part: its activations per hook, keys, labels, statistics and chunk checksums.

    Rows are buffered and written in whole chunks, so each chunk is written once.
    ``expected_images`` (e.g. the tar's sample count) sizes the chunks to fit the part.
    Nothing in the part counts until :meth:`close` sets the ``complete`` attribute.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        source: str,
        hooks: Sequence[HookLayout],
        dtype: str = "float16",
        compression: str = "none",
        chunk_bytes: int = layout.TARGET_CHUNK_BYTES,
        expected_images: int | None = None,
    ):
        self.name = name
        self.dir = store_path(root) / layout.PARTS / name
        self.dtype = np.dtype(dtype)
        if compression not in layout.COMPRESSIONS:
            raise ClipsaeError(f"compression must be one of {', '.join(layout.COMPRESSIONS)}, not {compression!r}")
        zb.create_group(self.dir, {layout.COMPLETE: False, "source": source, layout.STARTED_BY: writer_identity()})
        zb.create_group(self.dir / layout.ACTS, {})
        self._arrays: dict[str, ArrayAppender] = {}
        self.stats: dict[str, HookStats] = {}
        for h in hooks:
            rows = layout.chunk_rows(h.n_tokens, h.d, self.dtype.itemsize, chunk_bytes, expected_images)
            self._arrays[h.name] = ArrayAppender(self.dir / layout.ACTS / h.name, (h.n_tokens, h.d), rows, dtype,
                                                 compression)
            self.stats[h.name] = HookStats()
        self._keys: list[str] = []
        self._labels: list[int] = []

    @property
    def n_images(self) -> int:
        return len(self._keys)

    def append(
        self,
        keys: Sequence[str],
        labels: Sequence[int],
        acts: Mapping[str, np.ndarray],
        stats: Mapping[str, HookStats] | None = None,
    ) -> None:
        """Add a batch of images: ``acts[hook]`` is (len(keys), n_tokens, d).

        ``stats`` are the batch's statistics if the caller already has them (extraction
        computes them on the GPU); otherwise they are computed here.
        """
        for name, arr in acts.items():
            if arr.shape[0] != len(keys):
                raise ValueError(f"hook {name}: {arr.shape[0]} rows for {len(keys)} keys")
            with np.errstate(over="ignore"):  # overflow to inf is counted in the stats, not warned
                block = np.ascontiguousarray(arr, dtype=self.dtype)
            if stats is None:
                self.stats[name].update(block)
            else:
                self.stats[name] = self.stats[name].merge(stats[name])
            self._arrays[name].append(block)
        self._keys.extend(str(k) for k in keys)
        self._labels.extend(int(x) for x in labels)

    def close(self, extra_attrs: Mapping | None = None) -> None:
        """Write what is buffered, the keys and labels, then mark the part complete."""
        chunks = {name: arr.close() for name, arr in self._arrays.items()}
        n = len(self._keys)
        chunks[layout.KEYS] = zb.write_text(self.dir / layout.KEYS, self._keys)
        chunks[layout.LABELS] = zb.write_small(self.dir / layout.LABELS, np.asarray(self._labels, dtype=np.int64),
                                               fill_value=-1)
        attrs = {
            **(extra_attrs or {}),
            "n_images": n,
            "hook_stats": {h: s.to_json() for h, s in self.stats.items()},
            layout.CHUNKS: chunks,
            "written_by": writer_identity(),
        }
        zb.update_attributes(self.dir, attrs)
        # The marker goes last and alone: a reader trusts nothing of a part before it.
        zb.update_attributes(self.dir, {layout.COMPLETE: True})


def writer_identity() -> dict:
    """Who wrote a part and when: host, process, time, and the Slurm job (``1234_5`` for an array task)."""
    who = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        who["slurm_job"] = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    elif "SLURM_JOB_ID" in env:
        who["slurm_job"] = env["SLURM_JOB_ID"]
    return who


def record_store_stats(path: str | Path, all_parts: set[str]) -> None:
    """Once every part of ``all_parts`` is complete, record store-wide hook statistics in the root.

    Any worker may be the last; each computes the same numbers from the same parts, and
    metadata files are replaced atomically, so concurrent finishers agree.
    """
    from clipsae.store.reader import ActivationStore, complete_parts

    if not all_parts <= complete_parts(path):
        return
    s = ActivationStore.open(path)
    zb.update_attributes(store_path(path), {"hook_stats": {h: s.hook_stats(h).to_json() for h in s.hooks},
                                      "n_images": s.n_images})


def write_store(
    path: str | Path,
    acts: Mapping[str, np.ndarray],
    keys: Sequence[str],
    labels: Sequence[int] | None = None,
    attrs: Mapping | None = None,
    dtype: str | None = None,
    part: str = "part-00000",
    layouts: Mapping[str, Mapping] | None = None,
    source: str = "write_store",
) -> None:
    """Write activations computed elsewhere as a store (or one more part of one).

    ``acts[hook]`` is (n, n_tokens, d) or (n, d); ``keys`` name the n images uniquely;
    ``labels`` default to -1. ``attrs`` go into the store's identity (``model`` at least
    is expected); writing a second part with the same attrs and shapes extends the store.
    ``layouts[hook]`` describes a hook's tokens: ``cls_token`` (token 0 is CLS), ``grid``
    ((rows, cols) of the patch tokens that follow) and ``meaning`` (free text). ``source`` is the
    webdataset tar the images came from, where analyses read them back to show them.
    """
    keys = [str(k) for k in keys]
    n = len(keys)
    if len(set(keys)) != n:
        raise ClipsaeError("keys must be unique")
    labels = [-1] * n if labels is None else [int(x) for x in labels]
    if len(labels) != n:
        raise ClipsaeError(f"{len(labels)} labels for {n} keys")
    shaped = {h: (a[:, None, :] if a.ndim == 2 else a) for h, a in acts.items()}
    for h, a in shaped.items():
        if a.ndim != 3 or a.shape[0] != n:
            raise ClipsaeError(f"hook {h}: expected ({n}, n_tokens, d), got {tuple(a.shape)}")
    dtype = dtype or str(next(iter(shaped.values())).dtype)
    if dtype not in layout.DTYPES:
        raise ClipsaeError(f"dtype {dtype!r} not supported; use one of {', '.join(layout.DTYPES)}")
    try:
        hooks = [HookLayout(h, a.shape[1], a.shape[2], **{k: (tuple(v) if k == "grid" and v else v)
                                                           for k, v in (layouts or {}).get(h, {}).items()})
                 for h, a in shaped.items()]
    except (TypeError, ValueError) as exc:
        raise ClipsaeError(f"layouts: {exc}") from None
    user = dict(attrs or {})
    config = {
        "model": user.pop("model", "unknown"),
        "tokens": user.pop("tokens", "all"),
        "dtype": dtype,
        "hooks": {h.name: h.to_json() for h in hooks},
        **user,
    }
    root = open_root(path, config, {"created_by": "clipsae.store.write_store"})
    writer = PartWriter(root, part, source=source, hooks=hooks, dtype=dtype, expected_images=n)
    writer.append(keys, labels, shaped)
    writer.close()
