"""Absorption of TopK, Matryoshka and MP SAEs of one width and L0 on planted hierarchies (docs/benchmarks.md).

For each seed: a planted set (analysis/evaluation/planted_hierarchy.py: 4 parents × 12 children, d = 64,
6,000 images), a TopK, a Matryoshka (reverse-linear level weights unless asked) and a Matching-Pursuit SAE of
64 latents and k = 2 (MP: 2 picks) trained for 600 steps of 256, each encoded and scored by ``analyze absorption``.
Prints each seed's rates, the means and each architecture's mean absorption against TopK's.

    .venv/bin/python -m bench.absorption [--seeds 0,1,2,3] [--archs topk,matryoshka,mp] [--out /tmp/absorption-bench]
                                         [--matryoshka-weighting rw]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from clipsae.analysis.commands import Target
from clipsae.analysis.encode import run_encode
from clipsae.analysis.encode_config import EncodeConfig
from clipsae.analysis.evaluation.absorption import run_absorption
from clipsae.analysis.evaluation.planted_hierarchy import HOOK, write_planted_hierarchy
from clipsae.train.configure import configure_training
from clipsae.train.trainer import run_train

ARCHS = ("topk", "matryoshka", "mp")
LATENTS, K, STEPS, BATCH = 64, 2, 600, 256


def planted_absorption(root: Path, seed: int = 0, weighting: str = "rw", archs: tuple[str, ...] = ARCHS) -> dict[str, dict]:
    """absorption.json's figures of each of ``archs`` (Matryoshka's level weights ``weighting``) trained on one
    planted hierarchy."""
    planted = write_planted_hierarchy(root, seed=seed)
    out = {}
    for arch in archs:
        run_dir = root / arch
        plan = configure_training(planted.store, hook=HOOK, arch=arch, latents=LATENTS, k=K, batch_size=BATCH,
                                  steps=STEPS, holdout=0.0, out=run_dir, matryoshka_weighting=weighting)
        run_train(plan.cfg, store=plan.store, held=plan.held)
        codes = run_encode(EncodeConfig(planted.store, run_dir, device="cpu", progress=False))
        t = Target.open(planted.store, codes.name, None, progress=False)
        run_absorption(t, planted.hierarchy, classes=planted.classes)
        out[arch] = json.loads((t.out / "absorption.json").read_text())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--out", type=Path, default=Path("/tmp/absorption-bench"))
    ap.add_argument("--matryoshka-weighting", default="rw", choices=("uw", "rw"))
    ap.add_argument("--archs", default=",".join(ARCHS))
    args = ap.parse_args()
    archs = tuple(args.archs.split(","))
    table = {arch: [] for arch in archs}
    for seed in map(int, args.seeds.split(",")):
        t0 = time.perf_counter()
        rates = planted_absorption(args.out / f"{args.matryoshka_weighting}-seed{seed}", seed, args.matryoshka_weighting,
                                   archs)
        for arch in archs:
            table[arch].append(rates[arch])
        print(f"seed {seed}: " + "; ".join(f"{a} absorption {r['absorption_rate']:.3f}, full {r['full_absorption_rate']:.3f}, "
                                          f"splitting {r['split_count']:.2f}" for a, r in rates.items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    mean = {a: {key: float(np.mean([r[key] for r in rs])) for key in ("absorption_rate", "full_absorption_rate", "split_count")}
            for a, rs in table.items()}
    for a, m in mean.items():
        print(f"mean {a}: absorption {m['absorption_rate']:.3f}, full {m['full_absorption_rate']:.3f}, splitting {m['split_count']:.2f}")
    for a in archs:
        if a != "topk" and "topk" in mean:
            print(f"TopK / {a} absorption: {mean['topk']['absorption_rate'] / max(mean[a]['absorption_rate'], 1e-12):.2f}×")


if __name__ == "__main__":
    main()
