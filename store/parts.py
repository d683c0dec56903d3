"""A group written in parts by independent workers (activations, codes): what state each part is in.

One classification, for every reader of parts (the store reader, encode, ``status``, ``verify``):
- complete: its metadata says ``complete: true``; only such a part is ever read;
- in progress: its metadata exists without the marker, and its writer may still run;
- interrupted: the same, but the writer recorded in ``started_by`` was a process on this host that
  no longer runs (a writer elsewhere cannot be asked, so stays in progress);
- damaged: its metadata exists but cannot be read. Metadata is replaced atomically, so it was
  altered after it was written; nothing of the part is used, and rebuilding it is the user's call.
A part folder with no metadata yet is in progress (its writer died, or is about to write it).
"""

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.location import is_remote

COMPLETE, IN_PROGRESS, INTERRUPTED, DAMAGED = "complete", "in progress", "interrupted", "damaged"


@dataclass(frozen=True)
class PartState:
    """One part folder's state; ``attrs`` its metadata's attributes (None where unreadable or absent)."""

    name: str
    state: str
    attrs: dict | None = None

    @property
    def started_by(self) -> dict | None:
        return (self.attrs or {}).get(layout.STARTED_BY)


def list_dirs(path: Path) -> list[str]:
    """Names of the folders in ``path`` (none when it does not exist), sorted."""
    if is_remote(path):
        # One listing says which entries are prefixes; asking each entry would cost a request each.
        try:
            entries = path.fs.ls(path.path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")
    return sorted(x.name for x in path.iterdir() if x.is_dir()) if path.is_dir() else []


def read_metadata_many(nodes: list[Path]) -> list[dict | None]:
    """Each node's ``zarr.json`` (None where missing or torn); remote ones 16 at a time, since
    each read is a round trip."""
    if not nodes or not is_remote(nodes[0]):
        return [zb.read_metadata(n) for n in nodes]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(zb.read_metadata, nodes))


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
    names = list_dirs(parts_dir)
    out = []
    for name, meta in zip(names, read_metadata_many([parts_dir / n for n in names])):
        attrs = zb.attributes_of(meta)
        if attrs is None:
            out.append(PartState(name, DAMAGED if zb.is_node(parts_dir / name) else IN_PROGRESS))
        elif attrs.get(layout.COMPLETE) is True:
            out.append(PartState(name, COMPLETE, attrs))
        else:
            out.append(PartState(name, INTERRUPTED if writer_alive(attrs.get(layout.STARTED_BY)) is False
                                 else IN_PROGRESS, attrs))
    return out
