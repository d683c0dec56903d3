"""Extraction throughput vs the bare model forward on pre-decoded tensors (goal ≥ 0.9).

The pipeline figure covers reading tars, decoding and preprocessing JPEGs, the forward
pass, and writing the store; the reference runs the same hooked forward on tensors that
are already decoded, same batch size and dtype. A second reference is the model's own
forward to its image embedding (``visual(images)``), which shows what our hooks cost against
the tower's own code (timm's towers are read through forward_intermediates). Goal: ratio >= 0.9.
"""

import argparse
import io
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipsae.device import resolve_device  # noqa: E402
from clipsae.pipeline.config import ExtractConfig, ModelConfig  # noqa: E402
from clipsae.pipeline.extract import autocast_for, run_extract  # noqa: E402
from clipsae.pipeline.hooks import HookedForward, resolve_hooks  # noqa: E402
from clipsae.pipeline.model import load_model  # noqa: E402
from clipsae.pipeline.synthetic import make_synthetic_shards  # noqa: E402


def bare_forward_rate(model: str, layers: list[str], tokens: str, images: torch.Tensor, batch: int,
                      device: torch.device, precision: str) -> float:
    """Images/s of the hooked forward and the float16 cast on tensors already on ``device``."""
    loaded = load_model(ModelConfig(model))
    fwd = HookedForward(loaded.visual.to(device), resolve_hooks(loaded.visual, layers, tokens), tokens)
    images = images.to(device)
    with autocast_for(device, precision):
        fwd(images[:batch])  # warm-up
        _sync(device)
        t = time.perf_counter()
        for s in range(0, len(images), batch):
            out = fwd(images[s : s + batch])
            for a in out.values():
                a.to(torch.float16)
        _sync(device)
    return len(images) / (time.perf_counter() - t)


def own_forward_rate(model: str, images: torch.Tensor, batch: int, device: torch.device, precision: str) -> float:
    """Images/s of the tower's own forward to its output (``visual(images)``), on tensors already on ``device``."""
    visual = load_model(ModelConfig(model)).visual.to(device)
    images = images.to(device)
    with torch.no_grad(), autocast_for(device, precision):
        visual(images[:batch])
        _sync(device)
        t = time.perf_counter()
        for s in range(0, len(images), batch):
            visual(images[s : s + batch])
        _sync(device)
    return len(images) / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--layers", default="11")
    ap.add_argument("--tokens", default="all")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=320, help="side of the synthetic JPEGs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--loader-workers", default="0,1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    a = ap.parse_args()
    layers = a.layers.split(",")
    work = Path(tempfile.mkdtemp())
    try:
        make_synthetic_shards(work / "shards", a.images, per_shard=a.images // 4, size=a.image_size)
        pre = load_model(ModelConfig(a.model)).preprocess
        images = []
        for tar in sorted((work / "shards").glob("*.tar")):
            with tarfile.open(tar) as tf:
                images += [pre(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"))
                           for m in tf.getmembers() if m.name.endswith(".jpg")]
        images = torch.stack(images)
        device = resolve_device(a.device)
        ref = bare_forward_rate(a.model, layers, a.tokens, images, a.batch, device, a.precision)
        print(f"{a.model} layers={a.layers} tokens={a.tokens} batch={a.batch} images={a.images} "
              f"({a.image_size}px JPEG) threads={torch.get_num_threads()} device={device} precision={a.precision}")
        own = own_forward_rate(a.model, images, a.batch, device, a.precision)
        print(f"the tower's own forward           {own:7.1f} images/s")
        print(f"bare forward on decoded tensors   {ref:7.1f} images/s   ratio {ref / own:.2f} to the own forward")
        for lw in (int(x) for x in a.loader_workers.split(",")):
            r = run_extract(ExtractConfig(
                model=ModelConfig(a.model), layers=layers, tokens=a.tokens, shards=str(work / "shards"),
                store=str(work / f"s{lw}.zarr"), batch_size=a.batch, loader_workers=lw, progress=False,
                device=a.device, precision=a.precision))
            rate = r.images / r.seconds_streaming
            print(f"pipeline, --loader-workers {lw}      {rate:7.1f} images/s   ratio {rate / ref:.2f}  (goal >= 0.9); "
                  f"{rate / own:.2f} to the own forward")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
