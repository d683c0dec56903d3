"""Rows/s the training stream delivers from a real store vs tokens/s the trainer consumes.

The store (float16, all tokens) is written, evicted from the page cache, then read through
ShuffleStream exactly as ``clipsae train`` reads it (shuffled chunks, background threads, shuffle
buffer, holdout filter). The trainer side is clipsae's sparse TopK step on batches from that
stream. The loader keeps up when the ratio is above 1.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import activation_array, evict  # noqa: E402
from clipsae.store import ActivationStore, write_store  # noqa: E402
from clipsae.train.data import RowSource, ShuffleStream, holdout_mask  # noqa: E402
from clipsae.train.sae import TrainingSAE, optimise  # noqa: E402
from clipsae.train.spec import SAESpec  # noqa: E402


def main():
    def extra(ap):
        ap.add_argument("--batch", type=int, default=4096)
        ap.add_argument("--threads", type=int, default=2)
        ap.add_argument("--train-steps", type=int, default=5)

    a, acts = activation_array(__doc__, extra)
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        path = work / "s.zarr"
        write_store(path, {"h": acts}, keys=[f"img{i}" for i in range(a.images)], attrs={"model": "bench"})
        del acts
        store = ActivationStore.open(path)
        held = holdout_mask(store.keys(), 0.01, 0)
        source = RowSource(store, "h", store.token_indices("h", "all"), ~held)
        evict(path)
        stream = ShuffleStream(source, a.batch, 2**18, seed=0, threads=2)
        n_batches = source.n_rows // a.batch
        t = time.perf_counter()
        for _ in range(n_batches):
            stream.next_batch()
        loader = n_batches * a.batch / (time.perf_counter() - t)
        sae = TrainingSAE(SAESpec("topk", a.d, 16, k=32), 0)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
        batches = [stream.next_batch().float() for _ in range(a.train_steps + 1)]
        optimise(sae, opt, batches[0], None, 1.0)
        t = time.perf_counter()
        for x in batches[1:]:
            optimise(sae, opt, x, None, 1.0)
        trainer = a.train_steps * a.batch / (time.perf_counter() - t)
        stream.close()
    finally:
        shutil.rmtree(work)
    print(f"{source.n_rows:,} training rows of d={a.d} float16, page cache evicted first")
    print(f"loader (ShuffleStream)     {loader:12,.0f} rows/s   ({loader * a.d * 2 / 1e9:.2f} GB/s)")
    print(f"trainer (sparse TopK step) {trainer:12,.0f} tokens/s")
    print(f"loader / trainer           {loader / trainer:12.1f}")


if __name__ == "__main__":
    main()
