"""Reading samples from one webdataset tar, keeping going past bad images and stopping cleanly at a truncation."""

import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_iterator

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_LISTED_FAILURES = 1000


@dataclass
class TarReport:
    """What happened to one tar: samples seen, images skipped (with why), truncation."""

    n_samples: int = 0
    n_failed: int = 0
    failures: list[dict] = field(default_factory=list)
    truncated: str | None = None

    def fail(self, key: str, why: str) -> None:
        self.n_failed += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append({"key": key, "error": why})

    def to_json(self) -> dict:
        return {"n_samples": self.n_samples, "n_failed": self.n_failed, "failures": self.failures, "truncated": self.truncated}


def _label(sample: dict, label_key: str | None) -> int:
    try:
        if label_key:
            value = json.loads(sample["json"])[label_key]
        elif "cls" in sample:
            value = sample["cls"].decode().strip()
        else:
            return -1
        return int(value)
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        return -1


def iter_samples(path: str, label_key: str | None, report: TarReport) -> Iterator[tuple[str, bytes, int]]:
    """Yield ``(key, image_bytes, label)`` per sample that has an image; record the rest in ``report``.

    A truncated or unreadable tar ends the iteration after its last whole sample and sets
    ``report.truncated``; the samples before it are kept.
    """
    for key, data, label, _ in iter_samples_with(path, label_key, report, None):
        yield key, data, label


def iter_samples_with(path: str, label_key: str | None, report: TarReport,
                      extra: str | None) -> Iterator[tuple[str, bytes, int, bytes | None]]:
    """:func:`iter_samples`, with each sample's file of extension ``extra`` too (None where it has none)."""

    def skip_duplicate(exc: Exception) -> bool:
        report.fail("?", f"{type(exc).__name__}: {exc.args[0] if exc.args else exc}")
        return True

    try:
        with open(path, "rb") as f:
            files = ({**x, "__url__": path} for x in tar_file_iterator(f))
            for sample in group_by_keys(files, handler=skip_duplicate):
                report.n_samples += 1
                key = sample["__key__"]
                ext = next((e for e in IMAGE_EXTS if e in sample), None)
                if ext is None:
                    report.fail(key, "no image (jpg, jpeg, png or webp) in sample")
                    continue
                yield key, sample[ext], _label(sample, label_key), sample.get(extra) if extra else None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        report.truncated = f"{type(exc).__name__}: {exc}"


def iter_json(path: str) -> Iterator[tuple[str, dict | None]]:
    """Yield ``(key, the sample's .json as a dict or None)`` for every sample of a tar, in order;
    a json that does not parse, or is not an object, is None. A truncated tar ends the iteration."""
    try:
        with open(path, "rb") as f:
            for sample in group_by_keys({**x, "__url__": path} for x in tar_file_iterator(f)):
                meta = None
                if "json" in sample:
                    try:
                        meta = json.loads(sample["json"])
                    except (ValueError, UnicodeDecodeError):
                        meta = None
                yield sample["__key__"], meta if isinstance(meta, dict) else None
    except (tarfile.TarError, EOFError, OSError, ValueError):
        return


def count_samples(path: str) -> int | None:
    """Samples in a tar (member names grouped by key, as webdataset groups them), read from its
    headers alone; None when the tar cannot be listed (it is truncated or unreadable)."""
    try:
        with tarfile.open(path, "r:") as tar:
            # webdataset's key: the member's path up to the first dot of its file name.
            keys = {re.sub(r"\.[^/]*$", "", m.name) for m in tar if m.isfile()}
    except (tarfile.TarError, EOFError, OSError):
        return None
    return len(keys) or None


def decode_rgb(data: bytes) -> Image.Image:
    """The image in ``data``, decoded fully and converted to RGB."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")
