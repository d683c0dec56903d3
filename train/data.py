"""The training data stream: store chunks → selected tokens of training images → shuffled batches.

Chunks are read in a fresh seeded order each epoch by background threads; rows go through a
shuffle buffer of which each round serves a random half and refills it (serve half, keep half).
The stream's whole position (epoch, next chunk, the buffer's rows, its RNG, the batches queued
for the trainer) is a state dict, so a resumed run sees exactly the batches an uninterrupted one would.
"""

import hashlib
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore


def holdout_mask(keys: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the held-out images: a seeded hash of each key, so the split never moves."""
    if fraction <= 0:
        return np.zeros(len(keys), dtype=bool)
    cut = int(fraction * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}\0{k}".encode(), digest_size=8).digest(), "little") < cut for k in keys),
        dtype=bool, count=len(keys),
    )


class RowSource:
    """Rows (tokens) of one hook, for the images where ``image_mask`` is true, chunk by chunk."""

    def __init__(self, store: ActivationStore, hook: str, token_idx: np.ndarray, image_mask: np.ndarray):
        self.store = store
        self.hook = hook
        self.token_idx = token_idx
        self.image_mask = image_mask
        self.chunks = store.chunks(hook)
        self.d = store.d(hook)
        self.dtype = store.dtype

    @property
    def n_rows(self) -> int:
        return int(self.image_mask.sum()) * len(self.token_idx)

    def rows(self, i: int) -> np.ndarray:
        """Chunk ``i``'s selected rows (m, d): images in order, tokens in stored order within each."""
        c = self.chunks[i]
        sel = self.image_mask[c.start : c.stop]
        if not sel.any():
            return np.empty((0, self.d), dtype=self.dtype)
        acts_NTD = self.store.read_chunk(self.hook, c)
        if len(self.token_idx) != acts_NTD.shape[1]:
            acts_NTD = acts_NTD[:, self.token_idx]
        return np.ascontiguousarray(acts_NTD[sel]).reshape(-1, self.d)

    def iter_sample(self, seed: int):
        """Each chunk's rows, chunks taken in a seeded random order (for statistics and evaluation)."""
        for i in np.random.default_rng(seed).permutation(len(self.chunks)):
            yield self.rows(int(i))

    def sample(self, max_rows: int, seed: int) -> np.ndarray:
        """Up to ``max_rows`` rows of :meth:`iter_sample`, held in memory."""
        out, have = [], 0
        for r in self.iter_sample(seed):
            out.append(r)
            have += len(r)
            if have >= max_rows:
                break
        return np.concatenate(out)[:max_rows] if out else np.empty((0, self.d), dtype=self.dtype)


class _Prefetcher:
    """Reads chunks in the stream's order, ``lookahead`` ahead, on ``threads`` threads."""

    def __init__(self, source: RowSource, order, epoch: int, cursor: int, threads: int, lookahead: int):
        self.source, self.order = source, order
        self.epoch, self.cursor = epoch, cursor
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clipsae-read")
        self.pending: deque[tuple[int, int, Future]] = deque()
        self.lookahead = lookahead
        self._fill()

    def _fill(self) -> None:
        while len(self.pending) < self.lookahead:
            order = self.order(self.epoch)
            self.pending.append((self.epoch, self.cursor, self.pool.submit(self.source.rows, int(order[self.cursor]))))
            self.cursor += 1
            if self.cursor == len(order):
                self.epoch, self.cursor = self.epoch + 1, 0

    def next(self) -> tuple[int, int, np.ndarray]:
        """(epoch, position, rows) of the next chunk in order."""
        epoch, pos, fut = self.pending.popleft()
        self._fill()
        return epoch, pos, fut.result()

    def close(self) -> None:
        for *_, f in self.pending:
            f.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


class ShuffleBuffer:
    """The deterministic part of the stream: chunk order, buffer, shuffling. One thread uses it.

    The buffer holds ``capacity`` rows. Each round serves a random half of its slots, in random
    order, then refills exactly those slots with the next rows read: the same mixing as "shuffle,
    serve half, keep half", with each row copied once in and once out.
    """

    def __init__(self, source: RowSource, batch_size: int, buffer_rows: int, seed: int,
                 threads: int = 2, lookahead: int = 8):
        if source.n_rows == 0:
            raise ClipsaeError("no training rows: the store is empty or every image is held out")
        self.source = source
        self.batch_size = batch_size
        self.capacity = max(2 * batch_size, min(buffer_rows, source.n_rows))
        self.seed = seed
        self.threads, self.lookahead = threads, lookahead
        self.epoch, self.cursor = 0, 0
        dtype = torch.from_numpy(np.empty(0, source.dtype)).dtype
        self.pool: torch.Tensor | None = None  # (capacity, d) once filled
        self.spill = torch.empty(0, source.d, dtype=dtype)  # rows read beyond the slots to fill
        self.serve = torch.empty(0, dtype=torch.int64)  # this round's slots, in serving order
        self.pos = 0  # slots of this round already served
        self.gen = torch.Generator().manual_seed(seed)
        self._reader: _Prefetcher | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The chunk order of ``epoch``: a permutation fixed by (seed, epoch)."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.source.chunks))

    def _take(self, n: int) -> torch.Tensor:
        """The next ``n`` rows in reading order (spill first, then chunks)."""
        if self._reader is None:
            self._reader = _Prefetcher(self.source, self.order, self.epoch, self.cursor, self.threads, self.lookahead)
        parts, have = [self.spill], len(self.spill)
        while have < n:
            epoch, pos, rows = self._reader.next()
            n_chunks = len(self.source.chunks)
            self.epoch, self.cursor = (epoch, pos + 1) if pos + 1 < n_chunks else (epoch + 1, 0)
            parts.append(torch.from_numpy(rows))
            have += len(rows)
        rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        self.spill = rows[n:]
        return rows[:n]

    def _new_round(self) -> None:
        if self.pool is None:
            self.pool = self._take(self.capacity).clone()
        else:
            served = self.serve[: self.pos]
            self.pool.index_copy_(0, served, self._take(len(served)))
        self.serve = torch.randperm(self.capacity, generator=self.gen)[: self.capacity // 2]
        self.pos = 0

    def next_batch(self) -> torch.Tensor:
        """The next (batch_size, d) batch; a new round starts when this one's half is served."""
        if self.pool is None or self.pos + self.batch_size > len(self.serve):
            self._new_round()
        slots = self.serve[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.pool.index_select(0, slots)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "rng": self.gen.get_state(), "pos": self.pos,
                "pool": None if self.pool is None else self.pool.clone(), "spill": self.spill.clone(),
                "serve": self.serve.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.epoch, self.cursor, self.pos = int(state["epoch"]), int(state["cursor"]), int(state["pos"])
        self.pool, self.spill, self.serve = state["pool"], state["spill"], state["serve"]
        self.gen.set_state(state["rng"])

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class ShuffleStream:
    """Batches of ``batch_size`` rows (torch tensors in the store's dtype), forever, epoch after epoch.

    A producer thread runs the shuffle buffer ``queue`` batches ahead of the trainer, so reading,
    shuffling and copying overlap the training step. Its state includes the queued batches, so a
    resumed stream serves exactly what this one would have.
    """

    def __init__(self, source: RowSource, batch_size: int, buffer_rows: int, seed: int,
                 threads: int = 2, lookahead: int = 8, queue: int = 4):
        self.buffer = ShuffleBuffer(source, batch_size, buffer_rows, seed, threads, lookahead)
        self.source = source
        self.queue_size = queue
        self.queued: deque[torch.Tensor] = deque()
        self.cond = threading.Condition()
        self.wait_s = 0.0
        self.rows_made = 0
        self.busy_s = 0.0
        self._thread: threading.Thread | None = None
        self._stop = self._pause = self._parked = False
        self._error: BaseException | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The chunk order of ``epoch``: a permutation fixed by (seed, epoch)."""
        return self.buffer.order(epoch)

    def _produce(self) -> None:
        try:
            while True:
                with self.cond:
                    while (len(self.queued) >= self.queue_size or self._pause) and not self._stop:
                        self._parked = True
                        self.cond.notify_all()
                        self.cond.wait()
                    self._parked = False
                    if self._stop:
                        return
                t = time.perf_counter()
                batch = self.buffer.next_batch()
                with self.cond:
                    self.busy_s += time.perf_counter() - t
                    self.rows_made += len(batch)
                    self.queued.append(batch)
                    self.cond.notify_all()
        except BaseException as exc:  # handed to the trainer's thread, which raises it
            with self.cond:
                self._error, self._parked = exc, True
                self.cond.notify_all()

    def _start(self) -> None:
        if self._thread is None:
            self._stop = self._pause = self._parked = False
            self._thread = threading.Thread(target=self._produce, name="clipsae-shuffle", daemon=True)
            self._thread.start()

    def next_batch(self) -> torch.Tensor:
        """The next (batch_size, d) batch."""
        self._start()
        t = time.perf_counter()
        with self.cond:
            while not self.queued:
                if self._error is not None:
                    raise self._error
                self.cond.wait()
            batch = self.queued.popleft()
            self.cond.notify_all()
        self.wait_s += time.perf_counter() - t
        return batch

    def loader_rows_per_s(self) -> float:
        """Rows/s the loader (reading threads and shuffle buffer) produces while it is busy."""
        return self.rows_made / self.busy_s if self.busy_s > 0 else float("nan")

    def state_dict(self) -> dict:
        """The stream's position: enough to continue with the very same batches."""
        with self.cond:
            if self._thread is not None:
                self._pause = True
                self.cond.notify_all()
                while not self._parked:
                    self.cond.wait()
            if self._error is not None:
                raise self._error
            state = self.buffer.state_dict()
            state["queued"] = [b.clone() for b in self.queued]
            self._pause = False
            self.cond.notify_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.buffer.load_state_dict(state)
        self.queued = deque(state.get("queued", []))

    def close(self) -> None:
        """Stop the producer and the reading threads."""
        if self._thread is not None:
            with self.cond:
                self._stop = True
                self.cond.notify_all()
            self._thread.join()
            self._thread = None
        self.buffer.close()
