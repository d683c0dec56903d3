"""Turning tars into batches of preprocessed images, in loader processes when asked."""

from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipsae.pipeline.shards import Shard
from clipsae.pipeline.tario import TarReport, decode_image, iter_samples


class TarBatches(IterableDataset):
    """Yields, per tar in turn, its image batches and then one end-of-part record.

    A batch never spans two tars, so a part's batches are the same whatever the number
    of loader processes; each process takes whole tars, which keeps a tar's order.

    Items: ``{"kind": "batch", "part", "keys", "labels" (B,), "images" (B, 3, H, W)}`` and
    ``{"kind": "end", "part", "source", "report"}``.
    """

    def __init__(self, shards: list[Shard], preprocess, batch_size: int, label_key: str | None):
        self.shards = shards
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.label_key = label_key

    def _batch(self, part: str, keys: list[str], labels: list[int], images: list[torch.Tensor]) -> dict:
        return {
            "kind": "batch",
            "part": part,
            "keys": keys,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "images": torch.stack(images),
        }

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for shard in mine:
            report = TarReport()
            keys, labels, images = [], [], []
            for key, data, label in iter_samples(shard.path, self.label_key, report):
                try:
                    images.append(decode_image(data, self.preprocess))
                except Exception as exc:  # PIL raises many types for bad bytes
                    report.fail(key, f"{type(exc).__name__}: {exc}")
                    continue
                keys.append(key)
                labels.append(label)
                if len(keys) == self.batch_size:
                    yield self._batch(shard.part, keys, labels, images)
                    keys, labels, images = [], [], []
            if keys:
                yield self._batch(shard.part, keys, labels, images)
            yield {"kind": "end", "part": shard.part, "source": shard.path, "report": report.to_json()}


def make_loader(
    shards: list[Shard], preprocess, batch_size: int, label_key: str | None, workers: int, pin_memory: bool
) -> DataLoader:
    """A DataLoader over ``TarBatches``; worker processes are spawned, never forked, because
    zarr's event-loop thread does not survive a fork."""
    ds = TarBatches(shards, preprocess, batch_size, label_key)
    extra = {"multiprocessing_context": "spawn", "prefetch_factor": 4, "persistent_workers": False} if workers else {}
    return DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin_memory, **extra)
