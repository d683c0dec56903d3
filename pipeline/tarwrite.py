"""Writing labelled webdataset tars atomically (temp file, then rename)."""

import json
import os
from pathlib import Path
from typing import Iterable

from webdataset import TarWriter


def write_tar(path: Path, samples: Iterable[dict]) -> Path:
    """Write ``samples`` (webdataset dicts with ``__key__``) to ``path``; a killed write leaves no tar."""
    tmp = path.with_name(path.name + ".tmp")
    with TarWriter(str(tmp)) as sink:
        for s in samples:
            sink.write(s)
    os.replace(tmp, path)
    return path


def write_classes(out: Path, names: list[str]) -> None:
    """``classes.json``: label index -> class name, beside the tars."""
    (out / "classes.json").write_text(json.dumps(dict(enumerate(names)), indent=1))
