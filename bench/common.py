"""Helpers shared by the benchmarks: timing and evicting files from the page cache."""

import os
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def timed(out: dict, key: str):
    t = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t


def evict(path: Path) -> None:
    """Drop ``path``'s files from the page cache (no root needed), so reads hit the disk."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
