"""A ring of host buffers that activations are copied into without the model waiting for the copy.

On a GPU the buffers are pinned, each copy is queued with ``non_blocking=True`` and marked by a
CUDA event, and the writer thread waits on that event before it reads the buffer. A buffer goes
back to the ring when the writer is done with it, so the ring's size bounds the memory and the
model runs ahead of the disk by at most that many batches. On the CPU the copy is immediate.
"""

import threading
from typing import Callable

import numpy as np
import torch


class Slot:
    """One batch's host buffers: a tensor per name, reused batch after batch."""

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self.buffers: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.event: torch.cuda.Event | None = None

    def fill(self, tensors: dict[str, torch.Tensor]) -> None:
        """Queue the copy of each tensor (any leading size up to the largest seen) into this slot."""
        for name, t in tensors.items():
            buf = self.buffers.get(name)
            if buf is None or buf.shape[1:] != t.shape[1:] or buf.dtype != t.dtype or len(buf) < len(t):
                buf = self.buffers[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pinned)
            buf[: len(t)].copy_(t, non_blocking=self.pinned)
            self.rows[name] = len(t)
        if self.pinned:
            self.event = torch.cuda.Event()
            self.event.record()

    def arrays(self) -> dict[str, np.ndarray]:
        """Numpy views of the copied data, once the copies are done (valid until the slot is released)."""
        if self.event is not None:
            self.event.synchronize()
        return {name: buf[: self.rows[name]].numpy() for name, buf in self.buffers.items() if name in self.rows}


class HostRing:
    """``size`` slots handed out in turn; ``acquire`` waits for one the writer has released."""

    def __init__(self, size: int, pinned: bool):
        self.free = [Slot(pinned) for _ in range(size)]
        self.cond = threading.Condition()

    def acquire(self, check: Callable[[], None]) -> Slot:
        """A free slot; ``check`` is called while waiting, to raise the writer's error if it failed."""
        with self.cond:
            while not self.free:
                check()
                self.cond.wait(timeout=0.1)
            return self.free.pop()

    def release(self, slot: Slot) -> None:
        with self.cond:
            slot.rows.clear()
            self.free.append(slot)
            self.cond.notify()
