"""Time and size of a training checkpoint, and of resuming from it, with the shuffle buffer full.

A float16 store (2,048 images × 257 tokens, d = 1,024 by default: 539k rows) is trained from with
the default buffer of 262,144 rows and one TopK SAE (expansion 16, so 16,384 latents) after one
optimiser step, so Adam's moments exist. Measured: `Run.checkpoint()` as `clipsae train` calls
it, the checkpoint's size, and a resume (load and restore, which reads the buffer's rows back
from the store). The reference, in the same run, is the same checkpoint holding the buffer's and
the queued batches' rows themselves, as checkpoints did before.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import activation_array, scratch  # noqa: E402
from clipsae.store import ActivationStore, write_store  # noqa: E402
from clipsae.train.configure import configure_training  # noqa: E402
from clipsae.train.rundir import CHECKPOINT_FILE, load_checkpoint, save_checkpoint  # noqa: E402
from clipsae.train.sae import optimise  # noqa: E402
from clipsae.train.trainer import Run  # noqa: E402


def main():
    def extra(ap):
        ap.add_argument("--batch", type=int, default=4096)
        ap.add_argument("--expansion", type=int, default=16)
        ap.set_defaults(d=1024)

    a, acts = activation_array(__doc__, extra)
    with scratch("clipsae-bench-ckpt-") as tmp:
        write_store(tmp / "s.zarr", {"h": acts}, keys=[f"img{i}" for i in range(a.images)], attrs={"model": "bench"})
        del acts
        plan = configure_training(tmp / "s.zarr", hook="h", arch="topk", expansion=str(a.expansion), k="32",
                                  batch_size=a.batch, steps=100, out=tmp / "run", device="cpu", precision="fp32")
        (tmp / "run").mkdir()
        run = Run(plan.cfg, plan.store, plan.held)
        x = run.stream.next_batch().float()
        for sae, opt in zip(run.saes, run.opts):
            optimise(sae, opt, x, None, 1.0)
        t = time.perf_counter()
        run.checkpoint(wait=True)  # the whole write, as the reference's (the loop itself waits only for a copy)
        ckpt_s = time.perf_counter() - t
        size = (tmp / "run" / CHECKPOINT_FILE).stat().st_size / 2**20
        state = run.state()
        buf = run.stream.buffer
        state["stream"]["pool"], state["stream"]["spill"] = buf.pool.clone(), buf.spill.clone()
        state["stream"]["queued"] = [b.clone() for b, _ in run.stream.queued]
        (tmp / "ref").mkdir()
        t = time.perf_counter()
        save_checkpoint(tmp / "ref", state)
        ref_s = time.perf_counter() - t
        ref_size = (tmp / "ref" / CHECKPOINT_FILE).stat().st_size / 2**20
        expected = [run.stream.next_batch() for _ in range(3)]
        run.stream.close()
        again = Run(plan.cfg, ActivationStore.open(tmp / "s.zarr"), plan.held)
        t = time.perf_counter()
        again.restore(load_checkpoint(tmp / "run"))
        resume_s = time.perf_counter() - t
        same = all(torch.equal(e, again.stream.next_batch()) for e in expected)
        again.stream.close()
    rows = buf.capacity
    print(f"buffer of {rows:,} rows of d={a.d} float16; one TopK SAE of {a.expansion * a.d:,} latents with Adam")
    print(f"checkpoint: {ckpt_s:.2f} s, {size:.0f} MiB; with the rows (reference): {ref_s:.2f} s, {ref_size:.0f} MiB; "
          f"ratio {ckpt_s / ref_s:.2f}")
    print(f"resume (load + read the buffer's rows back): {resume_s:.2f} s; next batches identical: {same}")


if __name__ == "__main__":
    main()
