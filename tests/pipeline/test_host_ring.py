import threading

import pytest
import torch

from clipsae.pipeline.host_ring import HostRing


def test_each_batch_reaches_the_writer_intact_while_slots_are_reused():
    ring = HostRing(2, pinned=False)
    got, done = [], threading.Semaphore(0)

    def write(slot):
        got.append(slot.arrays()["h"].copy())
        ring.release(slot)
        done.release()

    for i in range(6):
        slot = ring.acquire(lambda: None)
        n = 3 if i % 2 else 2  # a short last batch uses part of the buffer
        slot.fill({"h": torch.full((n, 4), float(i))})
        threading.Thread(target=write, args=(slot,)).start()
    for _ in range(6):
        done.acquire()
    assert sorted((float(a[0, 0]), a.shape[0], bool((a == a[0, 0]).all())) for a in got) == \
        [(float(i), 3 if i % 2 else 2, True) for i in range(6)]


def test_waiting_for_a_slot_raises_the_writers_error():
    ring = HostRing(1, pinned=False)
    ring.acquire(lambda: None)

    def failed():
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ring.acquire(failed)
