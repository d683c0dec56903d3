"""Universal SAEs against today's route (an SAE per model, then ``analyze correlate``) on planted pairs, and a
universal step's cost against the separate steps it replaces (docs/benchmarks.md).

Routes, per seed, on tests/train/planted.py's planted pair (one sparse code per image through two random
dictionaries: 24 shared features, 8 of each model's own, d 32 and 24, 3,996 shared images):
- universal, ``--selection global`` and ``own``: a shared atom is found when the latent whose model-A atom is
  nearest it has cosine ≥ 0.9 with it in both models' decoders (one latent carries it in both);
- separate: a TopK SAE per model (same k, width and steps), their codes matched one-to-one by
  ``analyze correlate``; a shared atom is found when its nearest A latent (cosine ≥ 0.9) is matched to a B latent
  at cosine ≥ 0.9 with its B side.
Also the AUROC of ``analyze universal``'s universality score for the shared atoms' latents against the own ones'.

Step cost: one universal TopK step over d_A = 768 and d_B = 512 (global selection) against a TopK step on each
model alone, same width and batch, timed in this process.

    .venv/bin/python -m bench.universal [--seeds 0,1,2] [--out /tmp/universal-bench] [--steps 600]
"""

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from clipsae.analysis.commands import run_correlate, run_universal
from clipsae.analysis.encode import run_encode
from clipsae.analysis.encode_config import EncodeConfig
from clipsae.analysis.features.universal import roc_auc
from clipsae.train import load_sae
from clipsae.train.archs import get as get_arch
from clipsae.train.configure import configure_training
from clipsae.train.sae import TrainingSAE, optimise
from clipsae.train.spec import SAESpec
from clipsae.train.trainer import run_train
from tests.train.planted import planted_pair

SHARED, COS = 24, 0.9


def _cosines(D: np.ndarray, W: np.ndarray) -> np.ndarray:
    return D @ (W / np.linalg.norm(W, axis=1, keepdims=True)).T


def _nearest(D: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _cosines(D, W)
    return c.argmax(1), c.max(1)


def _encode(store: Path, sae: Path, name: str) -> None:
    run_encode(EncodeConfig(store, sae, name=name, device="cpu", progress=False))


def routes(root: Path, seed: int, steps: int) -> dict:
    a, b, D_a, D_b = planted_pair(root / "data", seed=seed, drop_b=100)
    common = dict(arch="topk", k="3", expansion="4", steps=steps, batch_size=256, lr=3e-3, holdout=0.05, seed=str(seed))
    plan = configure_training(None, universal=f"{a}:x,{b}:x", selection="global,own", out=root / "u", **common)
    dirs = run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held).dirs
    out = {}
    for label, sel in (("topk-x4-k3", "global"), ("topk-x4-k3-own", "own")):
        W_a, W_b = load_sae(dirs[label] / "models/0").W_dec.numpy(), load_sae(dirs[label] / "models/1").W_dec.numpy()
        ia, ca = _nearest(D_a, W_a)
        ib, _ = _nearest(D_b, W_b)
        found = (ca[:SHARED] >= COS) & (_cosines(D_b, W_b)[np.arange(SHARED), ia[:SHARED]] >= COS)
        _encode(a, dirs[label] / "models/0", f"u-{sel}")
        _encode(b, dirs[label] / "models/1", f"u-{sel}")
        run_universal([(a, f"u-{sel}"), (b, f"u-{sel}")], root / f"analysis-{sel}", device="cpu")
        table = {int(r["latent"]): float(r["universality"]) for r in csv.DictReader(open(root / f"analysis-{sel}" / "universal.csv"))}
        pos = set(ia[:SHARED]) | set(ib[:SHARED])
        neg = (set(ia[SHARED:]) | set(ib[SHARED:])) - pos
        lat = sorted(pos | neg)
        auroc = roc_auc(np.array([table[i] for i in lat]), np.array([i in pos for i in lat]))
        out[sel] = {"found": int(found.sum()), "auroc": auroc}
    sides = {}
    for name, store, D in (("a", a, D_a), ("b", b, D_b)):
        plan = configure_training(store, hook="x", out=root / f"sep-{name}", **common)
        run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
        _encode(store, root / f"sep-{name}", "sep")
        sides[name] = _nearest(D, load_sae(root / f"sep-{name}").W_dec.numpy())
    run_correlate((a, "sep"), (b, "sep"), root / "correlate", 16, "max", device="cpu")
    pairs = {(int(r["a"]), int(r["b"])) for r in csv.DictReader(open(root / "correlate" / "matching.csv"))}
    (ia, ca), _ = sides["a"], sides["b"]
    partner = dict(pairs)
    cos_b = _cosines(D_b, load_sae(root / "sep-b").W_dec.numpy())
    found = [ca[j] >= COS and int(ia[j]) in partner and cos_b[j, partner[int(ia[j])]] >= COS for j in range(SHARED)]
    out["separate"] = {"found": int(sum(found))}
    return out


def step_cost(repeats: int = 10) -> dict:
    """Seconds per step: a universal TopK step over both models, and each model's own TopK step."""
    torch.manual_seed(0)
    d_a, d_b, n, batch, k = 768, 512, 4096, 1024, 32
    arch = get_arch("topk")
    uni = TrainingSAE(SAESpec("topk", d_a + d_b, 1, k=k, latents=n, blocks=(d_a, d_b)), 0)
    alone = [TrainingSAE(arch.spec(d, 1, k, 0.0, latents=n), 0) for d in (d_a, d_b)]
    x = torch.randn(batch, d_a + d_b)

    def timed(sae, xb):
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
        optimise(sae, opt, xb, None, 1.0)
        t = time.perf_counter()
        for _ in range(repeats):
            optimise(sae, opt, xb, None, 1.0)
        return (time.perf_counter() - t) / repeats

    t_uni = timed(uni, x)
    t_a, t_b = timed(alone[0], x[:, :d_a].contiguous()), timed(alone[1], x[:, d_a:].contiguous())
    return {"universal_s": t_uni, "separate_a_s": t_a, "separate_b_s": t_b, "ratio": t_uni / (t_a + t_b)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", type=Path, default=Path("/tmp/universal-bench"))
    args = ap.parse_args()
    rows = {}
    for seed in map(int, args.seeds.split(",")):
        t = time.perf_counter()
        rows[seed] = routes(args.out / f"seed{seed}", seed, args.steps)
        r = rows[seed]
        print(f"seed {seed}: shared atoms found (of {SHARED}): universal global {r['global']['found']} "
              f"(AUROC {r['global']['auroc']:.3f}), universal own {r['own']['found']} (AUROC {r['own']['auroc']:.3f}), "
              f"separate SAEs + correlate {r['separate']['found']} ({time.perf_counter() - t:.0f} s)", flush=True)
    cost = step_cost()
    print(f"step: universal {cost['universal_s'] * 1e3:.1f} ms; alone {cost['separate_a_s'] * 1e3:.1f} + "
          f"{cost['separate_b_s'] * 1e3:.1f} ms; universal / sum of separate = {cost['ratio']:.2f}")
    (args.out / "universal_bench.json").write_text(json.dumps({"routes": rows, "step": cost}, indent=2))


if __name__ == "__main__":
    main()
