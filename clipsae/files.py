"""Writing a file so that a reader, or a kill, never sees half of it: into a temporary file beside
it, flushed to disk, then renamed over it (and the rename flushed with its folder).

Every file clipsae writes whole (run files, exported SAEs, checkpoints, tars, tables) goes through
here; the zarr chunks of a store have their own protocol (a part counts only once complete).
"""

import json
import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then make its file ``path`` in one step; a kill leaves the old one.

    The temporary name carries the process id, so two writers never share one. The file gets the
    permissions the umask gives any other file, whatever the writer chose (safetensors picks 0600).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Flush a rename to disk; a filesystem that cannot open folders (some network ones) is left to itself."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    """``text`` as ``path`` (UTF-8), atomically."""
    return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """``obj`` as JSON in ``path``, atomically."""
    return write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str | Path, what: str):
    """The JSON value in ``path``; one line calling the file ``what`` where it is missing or not JSON."""
    from clipsae.errors import ClipsaeError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ClipsaeError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ClipsaeError(f"{what} {path} is not readable JSON: {exc}") from None
