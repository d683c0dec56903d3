"""Helpers shared by the benchmarks: timing and evicting files from the page cache."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def timed(out: dict, key: str):
    t = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t


@contextmanager
def scratch(prefix: str):
    """A temporary folder, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_clipsae(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB from the kernel, stdout) of ``python -m clipsae ARGS`` as its own process."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "clipsae", *args], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t
        if status:
            err.seek(0)
            sys.exit(err.read())
        out.seek(0)
        return seconds, usage.ru_maxrss / 1024, out.read()


def read_pass_process(store: Path, codes: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a process that imports what the analyses import (torch with them) and
    reads every per-image value of ``codes`` once: the floor of any analysis that streams them."""
    code = ("import sys; from clipsae.analysis.features.search import search; from clipsae.store.codes import Codes; "
            "from clipsae.store.reader import ActivationStore; "
            "c = Codes(ActivationStore.open(sys.argv[1]), sys.argv[2]); "
            "print(sum(len(b.latents_E) for b in c.iter_images('max')))")
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code, str(store), codes], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    if status:
        sys.exit("the read pass failed")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


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


def activation_array(description: str, extra=None):
    """Parse the shared options (--images, --tokens, --d, --dir, plus ``extra(parser)``) and
    make the float16 activation array (images, tokens, d) the store benchmarks use."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=257)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--dir", default=None, help="Folder on the disk to measure (default: a temp dir)")
    if extra:
        extra(ap)
    a = ap.parse_args()
    acts = np.random.default_rng(0).standard_normal((a.images, a.tokens, a.d)).astype(np.float16)
    return a, acts


def add_step_options(ap: argparse.ArgumentParser) -> None:
    """The SAE-step sizes shared by bench/train_step.py and bench/peer_steps.py."""
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
