"""Checking a store's consistency: shapes, counts, unique keys and finite values."""

from dataclasses import dataclass, field

import numpy as np

from clipsae.store import layout
from clipsae.store.reader import ActivationStore


@dataclass
class VerifyReport:
    """What ``verify`` found: problems make a store unfit; incomplete parts are only noted."""

    problems: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: ActivationStore) -> VerifyReport:
    """Read every complete part in full and check it against its metadata and the store's."""
    report = VerifyReport(incomplete=list(store.incomplete_parts))
    for i, part in enumerate(store.parts):
        group = store.root[f"{layout.PARTS}/{part.name}"]
        for name in (layout.KEYS, layout.LABELS):
            n = group[name].shape[0] if name in group else None
            if n != part.n_images:
                report.problems.append(f"part {part.name}: {name} has {n} rows, metadata says {part.n_images}")
        for hook in store.hooks:
            try:
                arr = store.array(hook, i)
            except KeyError:
                report.problems.append(f"part {part.name}: hook {hook} is missing")
                continue
            want = (part.n_images, store.n_tokens(hook), store.d(hook))
            if arr.shape != want:
                report.problems.append(f"part {part.name}: {hook} has shape {arr.shape}, expected {want}")
                continue
            bad = 0
            for c in (c for c in store.chunks(hook) if c.part == i):
                bad += int(np.count_nonzero(~np.isfinite(store.read_chunk(hook, c).astype(np.float32))))
            if bad:
                report.problems.append(f"part {part.name}: {hook} has {bad} non-finite values")
            report.nonfinite[hook] = report.nonfinite.get(hook, 0) + bad
    keys = store.keys()
    uniq, counts = np.unique(keys, return_counts=True)
    if len(uniq) != len(keys):
        dup = uniq[counts > 1]
        report.problems.append(f"{len(dup)} keys occur more than once (first: {dup[0]!r})")
    return report
