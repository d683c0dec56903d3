"""Images/s of `clipsae encode` against the SAE's forward pass alone on the same rows (goal ≥ 0.8).

The reference encodes and decodes, batch by batch, rows already in memory as float32 tensors:
the work encode cannot avoid. Encode also reads the store, pools codes per image, sums per
feature and position, and writes the codes cache. Both use the same batch size and device.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipsae.analysis.encode import EncodeConfig, run_encode  # noqa: E402
from clipsae.device import resolve_device  # noqa: E402
from clipsae.store.reader import ActivationStore  # noqa: E402
from clipsae.store.writer import write_store  # noqa: E402
from clipsae.train.load import load_sae  # noqa: E402
from tests.analysis.helpers import sae_weights, saelens_dir  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=50, help="Tokens per image (ViT-B-32: 50).")
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    dev = resolve_device(a.device)
    tmp = Path(tempfile.mkdtemp(prefix="clipsae-bench-encode-"))
    try:
        rng = np.random.default_rng(0)
        per = 250
        for i in range(0, a.images, per):
            n = min(per, a.images - i)
            write_store(tmp / "s.zarr", {"h": rng.standard_normal((n, a.tokens, a.d), dtype=np.float32).astype(np.float16)},
                        [f"{i + j:07d}" for j in range(n)], attrs={"model": "bench"}, part=f"p{i:07d}",
                        layouts={"h": {"cls_token": True, "grid": None}})
        sae_dir = saelens_dir(tmp / "sae", {"architecture": "topk", "k": a.k},
                              sae_weights(0, d=a.d, n=a.d * a.expansion))
        store = ActivationStore.open(tmp / "s.zarr")
        x = torch.from_numpy(store.read("h", slice(None)).reshape(-1, a.d)).float().to(dev)
        sae = load_sae(sae_dir, device=str(dev))
        rows = a.batch_size // a.tokens * a.tokens

        def forward():
            with torch.no_grad():
                for s in range(0, len(x), rows):
                    c = sae.encode_sparse(x[s:s + rows])
                    sae.decode_sparse(c)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        forward()
        t = time.perf_counter()
        forward()
        ref = a.images / (time.perf_counter() - t)
        x = None  # free the activations before the timed runs
        cfg = EncodeConfig(tmp / "s.zarr", sae_dir, name="warm", batch_size=a.batch_size, device=a.device, progress=False)
        run_encode(cfg)
        t = time.perf_counter()
        run_encode(EncodeConfig(tmp / "s.zarr", sae_dir, name="timed", batch_size=a.batch_size, device=a.device,
                                progress=False))
        enc = a.images / (time.perf_counter() - t)
        print(f"device {dev}, {a.images} images x {a.tokens} tokens, d={a.d}, TopK x{a.expansion} k={a.k}, "
              f"batch {a.batch_size} rows, torch threads {torch.get_num_threads()}")
        print(f"SAE forward alone: {ref:9.1f} images/s ({ref * a.tokens:,.0f} tokens/s)")
        print(f"clipsae encode:    {enc:9.1f} images/s ({enc * a.tokens:,.0f} tokens/s)  ratio {enc / ref:.2f} (goal >= 0.8)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
