"""``clipsae extract``: run a vision tower over tars and write one store part per tar."""

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import zarr
from tqdm import tqdm

from clipsae import store
from clipsae.device import resolve_device
from clipsae.errors import ClipsaeError
from clipsae.pipeline.background import BackgroundRunner
from clipsae.pipeline.hooks import HookedForward, resolve_hooks
from clipsae.pipeline.loader import make_loader
from clipsae.pipeline.config import ExtractConfig
from clipsae.pipeline.model import load_model
from clipsae.pipeline.shards import expand_shards, my_shards, name_parts, worker_slot

@dataclass
class ExtractResult:
    """What one worker's run did."""

    parts_written: list[str] = field(default_factory=list)
    parts_skipped: list[str] = field(default_factory=list)
    images: int = 0
    failed: int = 0
    truncated: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole run, model loading included
    seconds_streaming: float = 0.0  # reading, decoding, forward and writing only


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _layouts(forward: HookedForward, device: torch.device) -> list[store.HookLayout]:
    """Each hook's (n_tokens, d), read off one forward pass on a blank image."""
    size = forward.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    with torch.no_grad():
        out = forward(torch.zeros(1, 3, *size, device=device))
    return [store.HookLayout(h.name, out[h.name].shape[1], out[h.name].shape[2], h.meaning) for h in forward.hooks]


def _finish_store_stats(path: str, all_parts: set[str]) -> None:
    """Once every part exists, record the store-wide hook statistics in the root attributes.

    Any worker may be the last; each computes the same numbers from the same parts, and
    zarr writes metadata atomically, so concurrent finishers agree.
    """
    if not all_parts <= store.complete_parts(path):
        return
    s = store.ActivationStore.open(path)
    root = zarr.open_group(path, mode="r+")
    root.attrs.update({"hook_stats": {h: s.hook_stats(h).to_json() for h in s.hooks}, "n_images": s.n_images})


def run_extract(cfg: ExtractConfig) -> ExtractResult:
    """Extract this worker's share of the tars into ``cfg.store``; complete parts are skipped."""
    t0 = time.perf_counter()
    shards = name_parts(expand_shards(cfg.shards))
    store.writer.check_store_path(cfg.store)
    n_workers, index = worker_slot(cfg.num_workers, cfg.worker_index)
    device = resolve_device(cfg.device)
    loaded = load_model(cfg.model)
    hooks = resolve_hooks(loaded.visual, cfg.layers, cfg.tokens)
    forward = HookedForward(loaded.visual.to(device), hooks, cfg.tokens)
    layouts = _layouts(forward, device)
    config = {
        **loaded.identity,
        "tokens": cfg.tokens,
        "dtype": cfg.dtype,
        "hooks": {h.name: h.to_json() for h in layouts},
    }
    provenance = {
        **loaded.provenance,
        "zarr_version": zarr.__version__,
        "numpy_version": np.__version__,
        "created_by": "clipsae extract",
        "token_order": "CLS first, then patches row-major (ViT); spatial positions row-major (ResNet)",
    }
    root = store.open_root(cfg.store, config, provenance)

    result = ExtractResult()
    done = store.complete_parts(cfg.store)
    mine = my_shards(shards, n_workers, index)
    todo = [s for s in mine if s.part not in done]
    result.parts_skipped = [s.part for s in mine if s.part in done]
    if todo:
        t1 = time.perf_counter()
        _extract_parts(cfg, root, todo, forward, loaded.preprocess, layouts, device, result)
        result.seconds_streaming = time.perf_counter() - t1
    _finish_store_stats(cfg.store, {s.part for s in shards})
    result.seconds = time.perf_counter() - t0
    return result


def _extract_parts(cfg, root, todo, forward, preprocess, layouts, device, result: ExtractResult) -> None:
    loader = make_loader(
        todo, preprocess, cfg.batch_size, cfg.label_key, cfg.loader_workers, pin_memory=device.type == "cuda"
    )
    out_dtype = torch.float16 if cfg.dtype == "float16" else torch.float32
    writers: dict[str, store.PartWriter] = {}

    def writer_for(part: str, source: str) -> store.PartWriter:
        if part not in writers:
            writers[part] = store.PartWriter(root, part, source, layouts, cfg.dtype, cfg.compression)
        return writers[part]

    def append(part, source, keys, labels, acts, stats):
        writer_for(part, source).append(keys, labels, acts, stats)

    def close(part, source, report):
        writer_for(part, source).close({"source": source, **report})
        del writers[part]

    sources = {s.part: s.path for s in todo}
    runner = BackgroundRunner()
    bar = tqdm(total=None, unit="img", desc=f"extract {len(todo)} tars", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for item in loader:
            part = item["part"]
            if item["kind"] == "batch":
                images = item["images"].to(device, non_blocking=True)
                with _autocast(device, cfg.precision):
                    acts = forward(images)
                stored = {h: a.to(out_dtype) for h, a in acts.items()}
                # Statistics of the batch as stored, computed where it is (the GPU, if any).
                stats = {h: store.HookStats.of(a) for h, a in stored.items()}
                host = {h: a.cpu().numpy() for h, a in stored.items()}
                runner.submit(lambda p=part, k=item["keys"], lb=item["labels"].numpy(), a=host, st=stats:
                              append(p, sources[p], k, lb, a, st))
                result.images += len(item["keys"])
                bar.update(len(item["keys"]))
            else:
                report = item["report"]
                runner.submit(lambda p=part, r=report: close(p, sources[p], r))
                result.parts_written.append(part)
                result.failed += report["n_failed"]
                if report["truncated"]:
                    result.truncated.append(part)
                bar.set_postfix(tars=f"{len(result.parts_written)}/{len(todo)}", bad_images=result.failed)
    finally:
        bar.close()
        runner.close()
