"""``clipsae extract``: run a vision tower over tars and write one store part per tar."""

import contextlib
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from clipsae.device import resolve_device
from clipsae.errors import ClipsaeError
from clipsae.pipeline.background import BackgroundRunner
from clipsae.pipeline.config import ExtractConfig
from clipsae.pipeline.hooks import HookedForward, resolve_hooks
from clipsae.pipeline.host_ring import HostRing
from clipsae.pipeline.loader import make_loader
from clipsae.pipeline.masks import MaskSpec, check_masks, find_mask_classes, mask_geometry
from clipsae.pipeline.model import load_model
from clipsae.pipeline.preprocess import split_preprocess
from clipsae.pipeline.shards import Shard, expand_shards, name_parts
from clipsae.pipeline.tario import IMAGE_EXTS, count_samples
from clipsae.store import layout
from clipsae.store.layout import HookLayout
from clipsae.store.location import store_path
from clipsae.store.parts import Claim, claim
from clipsae.store.stats import HookStats
from clipsae.store.writer import PartWriter, check_store_path, open_root, record_store_stats
from clipsae.workers import worker_slot


@dataclass
class ExtractResult:
    """What one worker's run did."""

    parts_written: list[str] = field(default_factory=list)
    parts_skipped: list[str] = field(default_factory=list)
    images: int = 0
    failed: int = 0
    truncated: list[str] = field(default_factory=list)
    damaged_redone: list[str] = field(default_factory=list)  # parts whose metadata was damaged, written again
    seconds: float = 0.0  # the whole run, model loading included
    seconds_streaming: float = 0.0  # reading, decoding, forward and writing only

    def summary(self, store: str) -> str:
        """One line for people: what was written, how fast, what was skipped."""
        rate = self.images / self.seconds if self.seconds else 0.0
        return (f"extracted {self.images} images from {len(self.parts_written)} tars into {store} "
                f"({rate:.1f} images/s overall); skipped {len(self.parts_skipped)} finished tars; "
                f"{self.failed} unreadable images skipped"
                + (f"; truncated tars: {', '.join(self.truncated)}" if self.truncated else "")
                + (f"; {len(self.damaged_redone)} part(s) whose metadata was damaged extracted again "
                   f"({', '.join(self.damaged_redone[:3])})" if self.damaged_redone else ""))


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``--precision`` (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@dataclass(frozen=True)
class _Opened:
    """The tars, the model with its hooks on the device, and the store's root with each hook's layout."""

    shards: list[Shard]
    masks: MaskSpec | None
    mine: Claim
    loaded: object
    forward: HookedForward
    root: object
    layouts: list[HookLayout]


def _open(cfg: ExtractConfig, device: torch.device, n_workers: int = 1, index: int = 0) -> _Opened:
    """Load the model onto ``device`` and create the store's root, or check it was made the same way.

    Worker ``index`` of ``n_workers`` claims its tars first, and their masks are checked before the
    store is touched.
    """
    shards = name_parts(expand_shards(cfg.shards))
    check_store_path(cfg.store)
    loaded = load_model(cfg.model)
    forward = HookedForward(loaded.visual.to(device), resolve_hooks(loaded.visual, cfg.layers, cfg.tokens), cfg.tokens)
    layouts = forward.layouts(device)
    masks, ignored = _mask_spec(cfg, shards, layouts, loaded.preprocess)
    config = {
        **loaded.identity,
        "tokens": cfg.tokens,
        "dtype": cfg.dtype,
        "hooks": {h.name: h.to_json() for h in layouts},
        **({layout.MASK_CLASSES: {str(i): n for i, n in masks.classes.items()}} if masks else {}),
    }
    provenance = {
        **loaded.provenance,
        "created_by": "clipsae extract",
        "token_order": "prefix tokens first (CLS, then registers), then patches row-major (ViTs); spatial positions "
                       "row-major (convolutional stages)",
    }
    mine = claim(shards, lambda s: s.part, store_path(cfg.store) / layout.PARTS, n_workers, index)
    # Masks are checked in every tar still to extract before the store is touched: a bad one stops the run here.
    if not ignored:
        check_masks([sh.path for sh in mine.todo], masks, cfg.mask_ext, IMAGE_EXTS, cfg.progress)
    return _Opened(shards, masks, mine, loaded, forward, open_root(cfg.store, config, provenance), layouts)


def _mask_spec(cfg: ExtractConfig, shards: list[Shard], layouts: list[HookLayout], preprocess) -> tuple[MaskSpec | None, bool]:
    """How this run reads masks (None where it has no mask classes), and whether it ignores the masks
    that it has classes for because no hook has patches to label (it says so)."""
    classes, source = find_mask_classes(cfg.mask_classes, shards[0].path if shards else None)
    if classes is None:
        return None, False
    grids = layout.patch_grids(layouts)
    if not grids:
        if cfg.mask_classes:
            raise ClipsaeError(f"--mask-classes labels patches, and no hook of this run stores any (--tokens "
                               f"{cfg.tokens}); use --tokens patches or all")
        tqdm.write(f"note: the masks of {source} are not read: no hook of this run stores patches (--tokens {cfg.tokens})")
        return None, True
    return MaskSpec(cfg.mask_ext, classes, mask_geometry(preprocess), grids), False


def create_store(cfg: ExtractConfig) -> list[Shard]:
    """Create (or check) the store's root on the CPU, before any worker starts; returns the tars.

    Workers of an array then only open it: on object stores creation is check-then-write, so
    one process, not many racing ones, must make it.
    """
    return _open(cfg, torch.device("cpu")).shards


def run_extract(cfg: ExtractConfig) -> ExtractResult:
    """Extract this worker's share of the tars into ``cfg.store``; complete parts are skipped."""
    t0 = time.perf_counter()
    n_workers, index = worker_slot(cfg.num_workers, cfg.worker_index)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    o = _open(cfg, device, n_workers, index)
    todo = o.mine.todo
    result = ExtractResult(parts_skipped=[s.part for s in o.mine.skipped], damaged_redone=o.mine.damaged)
    if todo:
        t1 = time.perf_counter()
        _extract_parts(cfg, o.root, todo, o.forward, o.loaded.preprocess, o.layouts, o.masks, device, result)
        result.seconds_streaming = time.perf_counter() - t1
    record_store_stats(cfg.store, {s.part for s in o.shards})
    result.seconds = time.perf_counter() - t0
    return result


def device_batch(images_N3HW: torch.Tensor, split, forward: HookedForward, device: torch.device, precision: str,
                 out_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One batch's work on the device: the images normalised, the forward pass, each hook's activations as
    stored and their statistics (``<hook>\0stats``), reduced where they are (the GPU, if any). Nothing here
    reads back to the host: the host ring's copy takes them there while the next batch runs."""
    images = images_N3HW.to(device, non_blocking=True)
    if split is not None:
        images = split.finish(images)
    with autocast_for(device, precision):
        acts = forward(images)
    stored = {h: a.to(out_dtype) for h, a in acts.items()}
    return {**stored, **{f"{h}\0stats": HookStats.reduce(a) for h, a in stored.items()}}


def _extract_parts(cfg, root, todo, forward, preprocess, layouts, masks, device, result: ExtractResult) -> None:
    # Loaders send uint8 images; the device divides and normalises (bitwise open_clip's result).
    split = split_preprocess(preprocess)
    loader = make_loader(
        todo, split.host if split else preprocess, cfg.batch_size, cfg.label_key, cfg.loader_workers,
        pin_memory=device.type == "cuda", masks=masks
    )
    out_dtype = torch.float16 if cfg.dtype == "float16" else torch.float32
    writers: dict[str, PartWriter] = {}

    def writer_for(part: str, source: str) -> PartWriter:
        if part not in writers:
            # The tar's sample count sizes the chunks so the part's last chunk wastes little disk.
            writers[part] = PartWriter(root, part, source, layouts, cfg.dtype, cfg.compression,
                                       expected_images=count_samples(source), patch_grids=masks.grids if masks else ())
        return writers[part]

    def append(part, source, keys, labels, acts, stats, patches):
        writer_for(part, source).append(keys, labels, acts, stats, patches)

    def close(part, source, report):
        writer_for(part, source).close({"source": source, **report})
        del writers[part]

    def write_batch(part, keys, labels, patches, slot):
        try:
            arrays = slot.arrays()
            acts = {h: a for h, a in arrays.items() if not h.endswith("\0stats")}
            stats = {h: HookStats.from_reduced(a.shape[0] * a.shape[1], arrays[f"{h}\0stats"]) for h, a in acts.items()}
            append(part, sources[part], keys, labels, acts, stats, patches)
        finally:
            ring.release(slot)

    sources = {s.part: s.path for s in todo}
    runner = BackgroundRunner()
    # Two slots beyond the writer's queue: one being filled, one being written.
    ring = HostRing(runner.depth + 2, pinned=device.type == "cuda")
    bar = tqdm(total=None, unit="img", desc=f"extract {len(todo)} tars", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for item in loader:
            part = item["part"]
            if item["kind"] == "batch":
                slot = ring.acquire(runner.check)
                slot.fill(device_batch(item["images"], split, forward, device, cfg.precision, out_dtype))
                patches = {g: (lab.numpy(), share.numpy()) for g, (lab, share) in item["patch_labels"].items()}
                runner.submit(lambda p=part, k=item["keys"], lb=item["labels"].numpy(), pl=patches, s=slot:
                              write_batch(p, k, lb, pl, s))
                result.images += len(item["keys"])
                bar.update(len(item["keys"]))
            else:
                report = item["report"]
                if report["n_samples"] == report["n_failed"] and not cfg.skip_bad_tars:
                    why = f" ({report['truncated']})" if report["truncated"] else ""
                    raise ClipsaeError(f"{sources[part]} holds no readable image{why}; the tars finished so far stay stored; "
                                       f"--skip-bad-tars records such a tar as an empty part and goes on")
                runner.submit(lambda p=part, r=report: close(p, sources[p], r))
                result.parts_written.append(part)
                result.failed += report["n_failed"]
                if report["truncated"]:
                    result.truncated.append(part)
                bar.set_postfix(tars=f"{len(result.parts_written)}/{len(todo)}", bad_images=result.failed)
    finally:
        bar.close()
        runner.close()
