"""Turning tars into batches of preprocessed images, in loader processes when asked."""

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipsae.pipeline.masks import MaskSpec
from clipsae.pipeline.shards import Shard
from clipsae.pipeline.tario import TarReport, decode_rgb, iter_samples_with


class TarBatches(IterableDataset):
    """Yields, per tar in turn, its image batches and then one end-of-part record.

    A batch never spans two tars, so a part's batches are the same whatever the number
    of loader processes; each process takes whole tars, which keeps a tar's order.

    Items: ``{"kind": "batch", "part", "keys", "labels" (B,), "images" (B, 3, H, W), "patch_labels"}``
    and ``{"kind": "end", "part", "source", "report"}``. ``patch_labels`` maps each patch grid's name to
    its (labels (B, P) int32, shares (B, P) float16), from the samples' masks; empty without ``masks``.
    """

    def __init__(self, shards: list[Shard], preprocess, batch_size: int, label_key: str | None,
                 masks: MaskSpec | None = None):
        self.shards = shards
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.label_key = label_key
        self.masks = masks

    def _batch(self, part: str, keys: list[str], labels: list[int], images: list[torch.Tensor], patches: list[dict]) -> dict:
        grids = patches[0] if patches else {}
        return {
            "kind": "batch",
            "part": part,
            "keys": keys,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "images": torch.stack(images),
            "patch_labels": {g: (torch.from_numpy(np.stack([p[g][0] for p in patches]).astype(np.int32)),
                                 torch.from_numpy(np.stack([p[g][1] for p in patches])))
                             for g in grids},
        }

    def _patches(self, mask: bytes | None, image) -> dict:
        """The sample's patch labels per grid; raises ValueError where its mask is missing or does not fit."""
        if self.masks is None:
            return {}
        if mask is None:
            raise ValueError(f"no mask ({self.masks.ext}) in sample")
        return self.masks.labels(self.masks.read(mask, image.size))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        ext = self.masks.ext if self.masks else None
        for shard in mine:
            report = TarReport()
            keys, labels, images, patches = [], [], [], []
            for key, data, label, mask in iter_samples_with(shard.path, self.label_key, report, ext):
                try:
                    rgb = decode_rgb(data)
                    patch = self._patches(mask, rgb)
                    images.append(self.preprocess(rgb))
                except Exception as exc:  # PIL raises many types for bad bytes
                    report.fail(key, f"{type(exc).__name__}: {exc}")
                    continue
                keys.append(key)
                labels.append(label)
                patches.append(patch)
                if len(keys) == self.batch_size:
                    yield self._batch(shard.part, keys, labels, images, patches)
                    keys, labels, images, patches = [], [], [], []
            if keys:
                yield self._batch(shard.part, keys, labels, images, patches)
            yield {"kind": "end", "part": shard.part, "source": shard.path, "report": report.to_json()}


def make_loader(
    shards: list[Shard], preprocess, batch_size: int, label_key: str | None, workers: int, pin_memory: bool,
    masks: MaskSpec | None = None,
) -> DataLoader:
    """A DataLoader over ``TarBatches``; worker processes are spawned, never forked, because
    zarr's event-loop thread does not survive a fork."""
    ds = TarBatches(shards, preprocess, batch_size, label_key, masks)
    extra = {"multiprocessing_context": "spawn", "prefetch_factor": 4, "persistent_workers": False} if workers else {}
    return DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin_memory, **extra)
