"""A whole `clipsae train` run against its training step alone, measured in the same run.

A float16 store of random activations is written; `clipsae train` (TopK, AuxK on the latents
that go dead, held-out evaluation and checkpoints included) runs as its own process, and its
metrics.jsonl gives the loop's tokens/s, the share of time the step waited for data and each
checkpoint's seconds. The reference is the same SAE's step alone on one batch already in
memory (bench/train_step.py's measurement). On a GPU: `--device cuda --precision bf16 --d 1024`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_step_options, run_clipsae, scratch  # noqa: E402
from bench.train_step import ours, rate  # noqa: E402
from clipsae.store import write_store  # noqa: E402
from clipsae.train.spec import SAESpec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(p)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.set_defaults(steps=60)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with scratch("clipsae-bench-train-run-") as tmp:
        rng = np.random.default_rng(0)
        for i in range(0, a.images, 1024):
            n = min(1024, a.images - i)
            write_store(tmp / "s.zarr", {"h": rng.standard_normal((n, a.tokens, a.d), dtype=np.float32).astype(np.float16)},
                        keys=[f"img{i + j:07d}" for j in range(n)], attrs={"model": "bench"}, part=f"p{i:07d}")
        run_clipsae(["train", "--store", str(tmp / "s.zarr"), "--hook", "h", "--arch", "topk",
                               "--k", str(a.k), "--expansion", str(a.expansion), "--batch-size", str(a.batch),
                               "--steps", str(a.steps), "--checkpoint-every", str(max(1, a.steps // 3)),
                               "--eval-every", str(max(1, a.steps // 2)), "--device", a.device,
                               "--precision", a.precision, "--threads", str(a.threads), "--out", str(tmp / "run"),
                               "--quiet"])
        lines = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        loader = [r for r in lines if r["split"] == "loader"][-1]
        ckpts = [r["seconds"] for r in lines if r["split"] == "checkpoint"]
        dead = [r["dead"] for r in lines if r["split"] == "heldout"]
        evals = [r["seconds"] for r in lines if r["split"] == "heldout"][:-1]  # the last is after the loop
        writes = [r["write_seconds"] for r in lines if r["split"] == "checkpoint"]
        spec = SAESpec("topk", a.d, a.expansion, k=a.k)
        x = torch.randn(a.batch, a.d, generator=torch.Generator().manual_seed(0)).to(a.device)
        alone = rate(ours(spec, x, a.precision == "bf16"), a.batch, 5)
    run = loader["train_tokens_per_s"]
    print(f"store of {a.images} images × {a.tokens} tokens, d={a.d} float16; TopK n={spec.d_sae} k={a.k}, "
          f"batch {a.batch}, {a.steps} steps on {a.device} ({a.precision}); dead latents at the evaluations: {dead}")
    print(f"clipsae train, whole run: {run:,.0f} tokens/s, waiting for data {loader['wait_fraction']:.1%} of the "
          f"time; checkpoints held the loop {', '.join(f'{s:.2f}' for s in ckpts)} s, written on a thread of their own "
          f"in {', '.join(f'{s:.2f}' for s in writes)} s; evaluations {', '.join(f'{s:.2f}' for s in evals)} s")
    print(f"step alone on a batch in memory: {alone:,.0f} tokens/s; run / step alone = {run / alone:.2f}")


if __name__ == "__main__":
    main()
