"""The training data stream: store chunks → selected tokens of training images → shuffled batches.

Chunks are read in a fresh seeded order each epoch by background threads; rows go through a
shuffle buffer of which each round serves a random half and refills it (serve half, keep half).
The stream's whole position (epoch, next chunk, the buffer's RNG, and which rows the buffer and the
batches queued for the trainer hold, by provenance) is a state dict of a few MB, so a checkpoint
is cheap and a resumed run, having read those rows back, sees exactly the batches an
uninterrupted one would.
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
        store.require_finite(hook)
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
        """(chunk, its rows) for each chunk, chunks taken in a seeded random order (for statistics and evaluation)."""
        for i in np.random.default_rng(seed).permutation(len(self.chunks)):
            yield self.chunks[int(i)], self.rows(int(i))

    def sample(self, max_rows: int, seed: int) -> np.ndarray:
        """Up to ``max_rows`` rows of :meth:`iter_sample`, held in memory."""
        out, have = [], 0
        for _, r in self.iter_sample(seed):
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


def _provenance(epoch: int, pos: int, n: int) -> torch.Tensor:
    """(n, 3): rows 0…n−1 of the chunk at ``pos`` of ``epoch``'s order."""
    src = torch.empty(n, 3, dtype=torch.int64)
    src[:, 0], src[:, 1], src[:, 2] = epoch, pos, torch.arange(n)
    return src


def _unknown(n: int) -> torch.Tensor:
    """Provenance of rows that came from a checkpoint of rows: unknown."""
    return torch.full((n, 3), -1, dtype=torch.int64)


class ShuffleBuffer:
    """The deterministic part of the stream: chunk order, buffer, shuffling. One thread uses it.

    The buffer holds ``capacity`` rows. Each round serves a random half of its slots, in random
    order, then refills exactly those slots with the next rows read: the same mixing as "shuffle,
    serve half, keep half", with each row copied once in and once out.

    Process ``rank`` of ``world`` reads positions rank, rank + world, … of each epoch's chunk
    order, which every process computes alike: the processes share each epoch without overlap.
    """

    def __init__(self, source: RowSource, batch_size: int, buffer_rows: int, seed: int,
                 threads: int = 2, lookahead: int = 8, rank: int = 0, world: int = 1):
        if source.n_rows == 0:
            raise ClipsaeError("no training rows: the store is empty or every image is held out")
        if len(source.chunks) < world:
            raise ClipsaeError(f"the store has {len(source.chunks)} chunks of {source.hook}, fewer than the {world} "
                               f"training processes; use fewer processes")
        self.rank, self.world = rank, world
        self.source = source
        self.batch_size = batch_size
        self.capacity = max(2 * batch_size, min(buffer_rows, source.n_rows))
        self.seed = seed
        self.threads, self.lookahead = threads, lookahead
        self.epoch, self.cursor = 0, 0
        dtype = torch.from_numpy(np.empty(0, source.dtype)).dtype
        self.pool: torch.Tensor | None = None  # (capacity, d) once filled
        self.spill = torch.empty(0, source.d, dtype=dtype)  # rows read beyond the slots to fill
        # Provenance of every row held: (epoch, position in that epoch's chunk order, row in the
        # chunk's selected rows). A checkpoint keeps these instead of the rows and reads them back.
        self.pool_src: torch.Tensor | None = None
        self.spill_src = torch.empty(0, 3, dtype=torch.int64)
        self.holds_unnamed_rows = False
        self.serve = torch.empty(0, dtype=torch.int64)  # this round's slots, in serving order
        self.pos = 0  # slots of this round already served
        # Each process shuffles its share with its own generator; process 0's is the one a lone process uses.
        self.gen = torch.Generator().manual_seed(
            seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1))
        self._reader: _Prefetcher | None = None

    def order(self, epoch: int) -> np.ndarray:
        """This process's chunks in ``epoch``'s order: its share of a permutation fixed by (seed, epoch)."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.source.chunks))[self.rank::self.world]

    def _take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` rows in reading order (spill first, then chunks), with their provenance."""
        if self._reader is None:
            self._reader = _Prefetcher(self.source, self.order, self.epoch, self.cursor, self.threads, self.lookahead)
        parts, srcs, have = [self.spill], [self.spill_src], len(self.spill)
        while have < n:
            epoch, pos, rows = self._reader.next()
            n_chunks = len(self.order(epoch))
            self.epoch, self.cursor = (epoch, pos + 1) if pos + 1 < n_chunks else (epoch + 1, 0)
            parts.append(torch.from_numpy(rows))
            srcs.append(_provenance(epoch, pos, len(rows)))
            have += len(rows)
        rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        src = torch.cat(srcs) if len(srcs) > 1 else srcs[0]
        self.spill, self.spill_src = rows[n:], src[n:]
        return rows[:n], src[:n]

    def rows_at(self, src_K3: torch.Tensor) -> torch.Tensor:
        """The rows (K, d) that provenance ``src_K3`` names, each chunk read once, on the reading threads."""
        out = torch.empty(len(src_K3), self.source.d, dtype=self.spill.dtype)
        if not len(src_K3):
            return out
        chunk_K = torch.empty(len(src_K3), dtype=torch.int64)
        for epoch in torch.unique(src_K3[:, 0]).tolist():
            mine = src_K3[:, 0] == epoch
            chunk_K[mine] = torch.from_numpy(self.order(epoch))[src_K3[mine, 1]]
        chunks = torch.unique(chunk_K).tolist()
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="clipsae-rebuild") as pool:
            for chunk, rows in zip(chunks, pool.map(self.source.rows, chunks)):
                mine = torch.nonzero(chunk_K == chunk).squeeze(1)
                out[mine] = torch.from_numpy(rows)[src_K3[mine, 2]]
        return out

    def _new_round(self) -> None:
        if self.pool is None:
            rows, src = self._take(self.capacity)
            self.pool, self.pool_src = rows.clone(), src.clone()
        else:
            served = self.serve[: self.pos]
            rows, src = self._take(len(served))
            self.pool.index_copy_(0, served, rows)
            self.pool_src.index_copy_(0, served, src)
        self.serve = torch.randperm(self.capacity, generator=self.gen)[: self.capacity // 2]
        self.pos = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (batch_size, d) batch and its provenance; a new round starts when this one's half is served."""
        if self.pool is None or self.pos + self.batch_size > len(self.serve):
            self._new_round()
        slots = self.serve[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.pool.index_select(0, slots), self.pool_src.index_select(0, slots)

    def state_dict(self) -> dict:
        """The position, with the buffer's rows named by provenance (a few MB), not copied; a
        buffer resumed from a checkpoint of rows (see ``load_state_dict``) keeps saving its rows."""
        state = {"epoch": self.epoch, "cursor": self.cursor, "rng": self.gen.get_state(), "pos": self.pos,
                 "pool_src": None if self.pool is None else self.pool_src.clone(),
                 "spill_src": self.spill_src.clone(), "serve": self.serve.clone()}
        if self.holds_unnamed_rows:
            state["pool"], state["spill"] = self.pool.clone(), self.spill.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``, reading back the rows its provenance names.

        Checkpoints written before provenance existed hold the rows themselves: they are taken as
        they are, their provenance marked unknown (−1), and this buffer saves rows from then on.
        """
        self.close()
        self.epoch, self.cursor, self.pos = int(state["epoch"]), int(state["cursor"]), int(state["pos"])
        self.serve = state["serve"]
        self.gen.set_state(state["rng"])
        if "pool" in state:
            self.holds_unnamed_rows = True
            self.pool, self.spill = state["pool"], state["spill"]
            self.pool_src = state.get("pool_src", None if self.pool is None else _unknown(len(self.pool)))
            self.spill_src = state.get("spill_src", _unknown(len(self.spill)))
            return
        self.pool_src, self.spill_src = state["pool_src"], state["spill_src"]
        self.pool = None if self.pool_src is None else self.rows_at(self.pool_src)
        self.spill = self.rows_at(self.spill_src)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class ShuffleStream:
    """Batches of ``batch_size`` rows (torch tensors in the store's dtype), forever, epoch after epoch.

    A producer thread runs the shuffle buffer ``queue`` batches ahead of the trainer, so reading,
    shuffling and copying overlap the training step. Its state names the queued batches' rows, so a
    resumed stream serves exactly what this one would have.
    """

    def __init__(self, source: RowSource, batch_size: int, buffer_rows: int, seed: int,
                 threads: int = 2, lookahead: int = 8, queue: int = 4, rank: int = 0, world: int = 1):
        self.buffer = ShuffleBuffer(source, batch_size, buffer_rows, seed, threads, lookahead, rank, world)
        self.source = source
        self.queue_size = queue
        self.queued: deque[tuple[torch.Tensor, torch.Tensor]] = deque()  # (batch, provenance)
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
                    self.rows_made += len(batch[0])
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
            batch, _ = self.queued.popleft()
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
            state["queued_src"] = [src.clone() for _, src in self.queued]
            if self.buffer.holds_unnamed_rows:
                state["queued"] = [b.clone() for b, _ in self.queued]
            self._pause = False
            self.cond.notify_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.buffer.load_state_dict(state)
        if "queued" in state:  # a checkpoint of rows (see ShuffleBuffer.load_state_dict)
            srcs = state.get("queued_src") or [_unknown(len(b)) for b in state["queued"]]
            self.queued = deque(zip(state["queued"], srcs))
        else:
            self.queued = deque((self.buffer.rows_at(src), src) for src in state["queued_src"])

    def close(self) -> None:
        """Stop the producer and the reading threads."""
        if self._thread is not None:
            with self.cond:
                self._stop = True
                self.cond.notify_all()
            self._thread.join()
            self._thread = None
        self.buffer.close()
