"""Checkpoints written on a thread of their own while training goes on.

At CLIP-Scope's width a checkpoint (weights and Adam's moments) is about 1.5 GiB, and its write and
fsync take seconds in which the device would otherwise idle. The loop waits only for a copy of the
state in host memory; the file is written while the next steps run. One write is in flight at a time:
the next checkpoint first waits for the last. Each write is atomic (``clipsae.files.atomic_write``),
so a kill at any moment leaves the previous checkpoint whole, and the same command resumes from it.
"""

import threading
import time
from typing import Callable

import torch


def host_copy(obj):
    """``obj`` with every tensor replaced by a copy in host memory that training can no longer change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Runs one write at a time on a background thread; :meth:`wait` joins it and raises what it raised."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._seconds = 0.0
        self._tag = None

    def submit(self, write: Callable[[], None], tag=None) -> None:
        """Start ``write()``. The last write must have been collected by :meth:`wait`, which gives its
        (tag, seconds) and raises its error: none is dropped unseen."""
        if self._thread is not None:
            raise RuntimeError("a checkpoint write is still uncollected: wait() for it first")

        def run() -> None:
            t = time.perf_counter()
            try:
                write()
            except BaseException as e:  # re-raised in the training thread by wait()
                self._error = e
            self._seconds = time.perf_counter() - t

        self._tag = tag
        # A daemon: the trainer waits for the write on every way out (finishing, stopping, failing), so
        # only a process killed outright leaves one unfinished, and then, as after kill -9, the previous
        # checkpoint is whole; the interpreter's exit never waits on it.
        self._thread = threading.Thread(target=run, name="clipsae-checkpoint", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        """Whether no write is in flight (the last one, if any, has finished; :meth:`wait` collects it)."""
        return self._thread is None or not self._thread.is_alive()

    def wait(self) -> tuple | None:
        """Block until the write in flight is on disk: its (tag, seconds it took), or None if there was none."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._tag, self._seconds
