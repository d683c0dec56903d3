"""Checking a store: every chunk a complete part (or codes part) recorded is there, whole and unaltered, and consistent."""

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.codes import codes_dir, codes_names
from clipsae.store.reader import ActivationStore, list_dirs
from clipsae.store.writer import chunk_checksum


@dataclass
class VerifyReport:
    """What ``verify`` found: problems make a store unfit; incomplete parts are only noted."""

    problems: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)
    unchecksummed: list[str] = field(default_factory=list)  # format-1 parts: no checksums recorded

    @property
    def ok(self) -> bool:
        return not self.problems


def _intact_chunks(arr: zb.Array, crc32c: list[int] | None, where: str, report: VerifyReport) -> Iterator[np.ndarray]:
    """Each chunk of ``arr`` that is present, decodable and unaltered (when checksums were recorded); the others are reported."""
    for c in range(arr.n_chunks):
        try:
            rows = arr.read_chunk(c)
        except zb.ChunkMissing as exc:
            report.problems.append(f"{where}: {exc}")
            continue
        except Exception as exc:  # a damaged compressed chunk fails in zarr's decoder
            report.problems.append(f"{where}: chunk {c} cannot be decoded ({type(exc).__name__}: {exc})")
            continue
        if crc32c is not None and chunk_checksum(rows) != crc32c[c]:
            report.problems.append(f"{where}: chunk {c} was altered after it was written (CRC32C differs)")
            continue
        yield rows


def _check_hook(store: ActivationStore, i: int, hook: str, report: VerifyReport) -> None:
    part = store.parts[i]
    where = f"part {part.name}, hook {hook}"
    try:
        arr = zb.Array(store.path / layout.PARTS / part.name / layout.ACTS / hook)
    except FileNotFoundError:
        report.problems.append(f"{where}: the array is missing")
        return
    want = (part.n_images, store.n_tokens(hook), store.d(hook))
    if arr.shape != want:
        report.problems.append(f"{where}: shape {arr.shape}, expected {want}")
        return
    recorded = part.attrs.get(layout.CHUNKS, {}).get(hook)
    if recorded is not None and (recorded["rows"] != arr.rows_per_chunk or len(recorded["crc32c"]) != arr.n_chunks):
        report.problems.append(f"{where}: {arr.n_chunks} chunks of {arr.rows_per_chunk} rows, but the part recorded "
                               f"{len(recorded['crc32c'])} of {recorded['rows']}")
        return
    bad = 0
    for rows in _intact_chunks(arr, None if recorded is None else recorded["crc32c"], where, report):
        bad += int(np.count_nonzero(~np.isfinite(rows.astype(np.float32))))
    if bad:
        report.problems.append(f"{where}: {bad} non-finite values")
    report.nonfinite[hook] = report.nonfinite.get(hook, 0) + bad


def _check_codes(store: ActivationStore, report: VerifyReport) -> None:
    """Every chunk of every complete codes part is there and has the CRC32C recorded when it was written."""
    for name in codes_names(store.path):
        parts = codes_dir(store.path, name) / layout.PARTS
        for part in (parts / n for n in list_dirs(parts)):
            attrs = zb.read_attributes(part)
            if attrs is None:
                report.problems.append(f"codes {name}, part {part.name}: its metadata ({zb.META}) is unreadable")
                continue
            if attrs.get(layout.COMPLETE) is not True:
                continue
            for array, recorded in attrs.get(layout.CHUNKS, {}).items():
                where = f"codes {name}, part {part.name}, {array}"
                try:
                    arr = zb.Array(part / array)
                except FileNotFoundError:
                    report.problems.append(f"{where}: the array is missing")
                    continue
                if len(recorded["crc32c"]) != arr.n_chunks:
                    report.problems.append(f"{where}: {arr.n_chunks} chunks, but the part recorded {len(recorded['crc32c'])}")
                    continue
                for _ in _intact_chunks(arr, recorded["crc32c"], where, report):
                    pass


def verify(store: ActivationStore) -> VerifyReport:
    """Read every complete part in full and check it against its metadata and the store's."""
    report = VerifyReport(incomplete=list(store.incomplete_parts))
    report.problems += [f"part {name}: its metadata ({zb.META}) is unreadable" for name in store.damaged_parts]
    keys_readable = True
    for i, part in enumerate(store.parts):
        if layout.CHUNKS not in part.attrs:
            report.unchecksummed.append(part.name)
        for name in (layout.KEYS, layout.LABELS):
            path = store.path / layout.PARTS / part.name / name
            try:
                n = len(zb.read_text(path)) if name == layout.KEYS else len(zb.Array(path).read_all())
            except (FileNotFoundError, zb.ChunkMissing) as exc:
                report.problems.append(f"part {part.name}: {name}: {exc}")
                keys_readable = keys_readable and name != layout.KEYS
                continue
            if n != part.n_images:
                report.problems.append(f"part {part.name}: {name} has {n} rows, metadata says {part.n_images}")
        for hook in store.hooks:
            _check_hook(store, i, hook, report)
    if keys_readable:
        keys = store.keys()
        uniq, counts = np.unique(keys, return_counts=True)
        if len(uniq) != len(keys):
            dup = uniq[counts > 1]
            report.problems.append(f"{len(dup)} keys occur more than once (first: {dup[0]!r})")
    _check_codes(store, report)
    return report
