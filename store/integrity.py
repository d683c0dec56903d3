"""Checking a store: every chunk a complete part (or codes part) recorded is there, whole and unaltered, and consistent."""

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.codes import codes_dir, codes_names
from clipsae.store.parts import COMPLETE, DAMAGED, scan_parts
from clipsae.store.reader import ActivationStore, recorded_checksums


@dataclass
class VerifyReport:
    """What ``verify`` found: problems make a store unfit; incomplete parts are only noted.

    ``damaged_parts`` and ``damaged_codes`` name what holds the problems, since each is rebuilt
    by a different command (extract for an activation part, encode for a codes part).
    ``checked`` says, a line each, what was read.
    """

    problems: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)
    unchecksummed: list[str] = field(default_factory=list)  # format-1 parts: no checksums recorded
    damaged_parts: set[str] = field(default_factory=set)
    damaged_codes: dict[str, set[str]] = field(default_factory=dict)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def part_problem(self, part: str, text: str, hook: str | None = None) -> None:
        self.problems.append(f"part {part}{f', hook {hook}' if hook else ''}: {text}")
        self.damaged_parts.add(part)

    def codes_problem(self, name: str, part: str, text: str, array: str | None = None) -> None:
        self.problems.append(f"codes {name}, part {part}{f', {array}' if array else ''}: {text}")
        self.damaged_codes.setdefault(name, set()).add(part)


def _intact_chunks(arr: zb.Array, report_problem) -> Iterator[np.ndarray]:
    """Each chunk of ``arr`` that is present, decodable and unaltered (when checksums were recorded);
    the others go to ``report_problem``. The check is the one every read makes (zarr_backend.Array)."""
    for c in range(arr.n_chunks):
        try:
            yield arr.read_chunk(c)
        except zb.ChunkDamaged as exc:
            report_problem(str(exc))


def _check_hook(store: ActivationStore, i: int, hook: str, report: VerifyReport) -> None:
    part = store.parts[i]
    problem = lambda text: report.part_problem(part.name, text, hook)  # noqa: E731
    crc32c = recorded_checksums(part.attrs, hook)
    try:
        arr = zb.Array(store.path / layout.PARTS / part.name / layout.ACTS / hook, crc32c)
    except FileNotFoundError:
        return problem("the array is missing")
    want = (part.n_images, store.n_tokens(hook), store.d(hook))
    if arr.shape != want:
        return problem(f"shape {arr.shape}, expected {want}")
    recorded = part.attrs.get(layout.CHUNKS, {}).get(hook)
    if recorded is not None and (recorded["rows"] != arr.rows_per_chunk or len(crc32c) != arr.n_chunks):
        return problem(f"{arr.n_chunks} chunks of {arr.rows_per_chunk} rows, but the part recorded "
                       f"{len(crc32c)} of {recorded['rows']}")
    bad = 0
    for rows in _intact_chunks(arr, problem):
        bad += int(np.count_nonzero(~np.isfinite(rows.astype(np.float32))))
    if bad:
        problem(f"{bad} non-finite values")
    report.nonfinite[hook] = report.nonfinite.get(hook, 0) + bad


def _check_keys_and_labels(store: ActivationStore, report: VerifyReport) -> bool:
    """Each part's keys and labels are whole, unaltered and as many as its images; True when every
    part's keys could be read."""
    keys_readable = True
    for part in store.parts:
        for name in (layout.KEYS, layout.LABELS):
            path = store.path / layout.PARTS / part.name / name
            crc32c = recorded_checksums(part.attrs, name)
            try:
                n = len(zb.read_text(path, crc32c) if name == layout.KEYS else zb.Array(path, crc32c).read_all())
            except (FileNotFoundError, zb.ChunkDamaged) as exc:
                report.part_problem(part.name, f"{name}: {exc}")
                keys_readable = keys_readable and name != layout.KEYS
                continue
            if n != part.n_images:
                report.part_problem(part.name, f"{name} has {n} rows, metadata says {part.n_images}")
    return keys_readable


def _check_patch_labels(store: ActivationStore, report: VerifyReport) -> None:
    """Each part's patch labels and shares: one row per image and patch of each grid, every chunk
    against its CRC32C, labels among the mask classes, shares in (0, 1]."""
    classes = store.mask_classes()
    if classes is None:
        return
    grids = store.patch_grids()
    known = np.array(sorted({0, *classes}))
    for part in store.parts:
        for grid in grids:
            for array in (layout.PATCH_LABELS, layout.PATCH_LABEL_SHARE):
                name = f"{array}/{layout.grid_name(grid)}"
                problem = lambda text, n=name: report.part_problem(part.name, f"{n}: {text}")  # noqa: E731
                try:
                    arr = zb.Array(store.path / layout.PARTS / part.name / name, recorded_checksums(part.attrs, name))
                except FileNotFoundError:
                    problem("the array is missing")
                    continue
                want = (part.n_images, grid[0] * grid[1])
                if arr.shape != want:
                    problem(f"shape {arr.shape}, expected {want}")
                    continue
                for rows in _intact_chunks(arr, problem):
                    if array == layout.PATCH_LABELS and not np.isin(rows, known).all():
                        problem(f"class index {int(np.setdiff1d(rows, known)[0])} is not among the mask classes")
                    if array == layout.PATCH_LABEL_SHARE and not ((rows > 0) & (rows <= 1)).all():
                        problem("a share outside (0, 1]")
    report.checked.append(f"patch labels: {len(grids)} grid(s) of {len(classes)} mask classes, every chunk against "
                          f"its CRC32C, labels and shares in range")


def _check_codes(store: ActivationStore, report: VerifyReport) -> None:
    """Every chunk of every complete codes part is there and has the CRC32C recorded when it was written."""
    for name in codes_names(store.path):
        parts = codes_dir(store.path, name) / layout.PARTS
        complete = 0
        for state in scan_parts(parts):
            part, attrs = parts / state.name, state.attrs
            if state.state == DAMAGED:
                report.codes_problem(name, part.name, f"its metadata ({zb.META}) is unreadable")
                continue
            if state.state != COMPLETE:
                continue
            complete += 1
            for array in attrs.get(layout.CHUNKS, {}):
                problem = lambda text, a=array: report.codes_problem(name, part.name, text, a)  # noqa: E731
                try:
                    arr = zb.Array(part / array, recorded_checksums(attrs, array))
                except FileNotFoundError:
                    problem("the array is missing")
                    continue
                for _ in _intact_chunks(arr, problem):
                    pass
        report.checked.append(f"codes {name}: {complete} complete part(s), every chunk against its CRC32C")


def verify(store: ActivationStore) -> VerifyReport:
    """Read every complete part, and every complete codes part, in full and check each against its
    metadata and the store's."""
    report = VerifyReport(incomplete=list(store.incomplete_parts))
    for name in store.damaged_parts:
        report.part_problem(name, f"its metadata ({zb.META}) is unreadable")
    report.unchecksummed = [p.name for p in store.parts if layout.CHUNKS not in p.attrs]
    keys_readable = _check_keys_and_labels(store, report)
    for i in range(len(store.parts)):
        for hook in store.hooks:
            _check_hook(store, i, hook, report)
    if keys_readable:
        keys = store.keys()
        uniq, counts = np.unique(keys, return_counts=True)
        if len(uniq) != len(keys):
            dup = uniq[counts > 1]
            report.problems.append(f"{len(dup)} keys occur more than once (first: {dup[0]!r})")
    report.checked.append(f"activations: {len(store.parts)} complete part(s), {store.n_images} images, hooks "
                          f"{', '.join(store.hooks)}: every chunk against its CRC32C, keys, labels, non-finite values")
    _check_patch_labels(store, report)
    _check_codes(store, report)
    return report
