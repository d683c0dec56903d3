"""Finding the input tars and naming the part each one becomes."""

import os
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from clipsae.errors import ClipsaeError


@dataclass(frozen=True)
class Shard:
    """An input tar and the name of the store part it becomes."""

    path: str
    part: str


def expand_shards(spec: str) -> list[str]:
    """Paths named by a brace pattern, a directory of tars, or a text file listing one per line."""
    p = Path(spec)
    if p.is_dir():
        paths = sorted(str(x) for x in p.glob("*.tar"))
    elif p.is_file() and p.suffix != ".tar":
        base = p.parent
        lines = [ln.strip() for ln in p.read_text().splitlines()]
        paths = [str(base / ln) if not os.path.isabs(ln) else ln for ln in lines if ln and not ln.startswith("#")]
    else:
        paths = list(braceexpand.braceexpand(spec))
    missing = [x for x in paths if not Path(x).is_file()]
    existing = [x for x in paths if Path(x).is_file()]
    if not existing:
        raise ClipsaeError(f"no shards match {spec!r}")
    if missing:
        raise ClipsaeError(f"{len(missing)} of {len(paths)} shards named by {spec!r} do not exist (first: {missing[0]})")
    return existing


def name_parts(paths: list[str]) -> list[Shard]:
    """One part name per tar: its stem, or its path below the common folder where stems repeat.

    The name depends only on the shard list, never on the worker count, so every worker
    and every rerun agree on it; store order is the sorted order of these names.
    """
    absolute = [os.path.abspath(x) for x in paths]
    if len(set(absolute)) != len(absolute):
        raise ClipsaeError("a shard is listed twice")
    stems = [Path(x).name.removesuffix(".tar") for x in absolute]
    if len(set(stems)) != len(stems):
        common = os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
        stems = [os.path.relpath(x, common).removesuffix(".tar").replace(os.sep, "__") for x in absolute]
    names = [s.lstrip("_.") or "part" for s in stems]
    return sorted((Shard(a, n) for a, n in zip(absolute, names)), key=lambda s: s.part)

