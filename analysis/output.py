"""Where analyses write, and how: CSV tables with fixed columns, PNG plots from the Agg backend."""

import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

from clipsae import files
from clipsae.files import atomic_write
from clipsae.store.codes import default_analysis_dir

# Files one analysis writes and another (the report) reads.
CORRELATE_PREFIX = "correlate-"
CORRELATE_PAIR = "pair.json"
NAMES_FILE = "names.csv"
SPLICE_FILE = "splice.json"
PROBE_FILE = "probe.csv"
NEURON_ALIGNMENT_FILE = "neuron_alignment.csv"


DEFAULT_BY = "max"


def by_setting(stem: str, suffix: str, by: str = DEFAULT_BY, k: int | None = None, default_k: int | None = None,
               **others: tuple[str, str]) -> str:
    """A file name that carries the settings it was made with where they are not the defaults
    (``top_images_by-cls_k32.csv``, ``monosemanticity_embed-resid.6.csv``), so that runs with other settings
    never overwrite each other. ``others``: name=(value, default) of any other setting that changes values."""
    tag = (f"_by-{by}" if by != DEFAULT_BY else "") + (f"_k{k}" if k is not None and k != default_k else "")
    tag += "".join(f"_{name}-{value}" for name, (value, default) in others.items() if value != default)
    return f"{stem}{tag}{suffix}"


def out_dir(out: Path | None, store: Path, codes: str) -> Path:
    """``--out``, or the folder beside the codes; created if missing."""
    path = Path(out) if out is not None else default_analysis_dir(store, codes)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Write a CSV with a header; NaN and None become empty cells. Written whole, then renamed."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            for row in rows:
                w.writerow([_cell(v) for v in row])

    return atomic_write(path, write)


def write_json(path: Path, obj) -> Path:
    """Write ``obj`` as indented JSON, whole, then renamed into place."""
    return files.write_json(path, obj, indent=1)


def remove_stale(path: Path) -> None:
    """Remove an output this run did not make (a figure with nothing to draw), so that an earlier run's
    file never stands beside this run's tables as if it were theirs."""
    path.unlink(missing_ok=True)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported when a plot is made."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
