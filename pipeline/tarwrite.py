"""Writing labelled webdataset tars atomically (temp file, then rename)."""

from pathlib import Path
from typing import Iterable

from webdataset import TarWriter

from clipsae.files import atomic_write, write_json


def write_tar(path: Path, samples: Iterable[dict]) -> Path:
    """Write ``samples`` (webdataset dicts with ``__key__``) to ``path``; a killed write leaves no tar."""
    def write(tmp: str) -> None:
        with TarWriter(tmp) as sink:
            for s in samples:
                sink.write(s)

    return atomic_write(path, write)


def write_classes(out: Path, names: list[str]) -> None:
    """``classes.json``: label index -> class name, beside the tars."""
    write_json(out / "classes.json", dict(enumerate(names)), indent=1)
