"""Dictionary recovery of TopK, BatchTopK and Matryoshka on hard planted data, by run length.

Not a speed benchmark: it prints, for each architecture trained with clipsae's own step on the
same batches, the mean over planted features of the best cosine with a learned feature, and
each architecture's ratio to TopK's in the same run. The data (tests/train/planted.py):
co-occurring features, lognormal magnitudes, a large common offset.
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipsae.train.config import default_lr  # noqa: E402
from clipsae.train.sae import TrainingSAE, optimise  # noqa: E402
from clipsae.train.spec import SAESpec  # noqa: E402
from clipsae.train.statistics import geometric_median  # noqa: E402
from tests.train.planted import hard_planted_dictionary, recovery  # noqa: E402


def train(arch: str, x: torch.Tensor, steps: int, expansion: int, k: int, batch: int) -> TrainingSAE:
    """clipsae's step with the trainer's initialisation, scaling and learning-rate schedule."""
    d = x.shape[1]
    xs = x * (math.sqrt(d) / x.norm(dim=1).mean())
    sae = TrainingSAE(SAESpec(arch, d, expansion, k=k), 1)
    with torch.no_grad():
        sae.b_dec.copy_(geometric_median(xs[:16384]))
    lr = default_lr(sae.spec.d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(2)
    warm = max(1, steps // 10)
    for step in range(steps):
        factor = min(1.0, (step + 1) / warm)
        if step >= 0.8 * steps:
            factor *= (steps - step) / (0.2 * steps)
        for group in opt.param_groups:
            group["lr"] = lr * factor
        dead = (sae.tokens_since_fired >= max(batch, steps * batch // 10)).nonzero().squeeze(1)
        optimise(sae, opt, xs[torch.randint(len(xs), (batch,), generator=gen)], dead, 1.0)
    return sae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", default="300,600,1500,3000")
    p.add_argument("--expansion", type=int, default=2)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch", type=int, default=1024)
    a = p.parse_args()
    x, D = hard_planted_dictionary(2048 * 8, 64, 128, 3, seed=0)
    x = torch.from_numpy(x)
    print(f"d=64, 128 planted features, expansion {a.expansion}, k={a.k}, batch {a.batch}")
    for steps in map(int, a.steps.split(",")):
        r = {arch: recovery(D, train(arch, x, steps, a.expansion, a.k, a.batch).W_dec.detach().numpy())
             for arch in ("topk", "batchtopk", "matryoshka")}
        print(f"{steps:>5} steps: " + "  ".join(f"{arch} {v:.4f} ({v / r['topk']:.3f}x)" for arch, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
