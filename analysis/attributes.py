"""Per-image attributes beyond the label: from a CSV keyed by image key, or from the samples' own .json.

Each attribute becomes one row of values over the store's images (nan where unknown):
- binary: its known values are {0, 1}, {−1, 1} (CelebA's convention; −1 becomes 0) or booleans;
- numeric: any other numbers;
- categorical (text): one binary attribute per distinct value, named ``attr=value``.
Images the source does not name, and cells left empty ("", "NA", "nan", null), are counted per
attribute and reported, never guessed.
"""

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore

MISSING = {"", "na", "nan", "null", "none"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
KEY_COLUMNS = ("key", "__key__")


@dataclass
class Attributes:
    """``values_AI``: attribute × store image (float64, nan unknown); ``binary`` per attribute."""

    names: list[str]
    values_AI: np.ndarray
    binary: np.ndarray
    source: str
    images_unnamed: int = 0  # store images the source has no entry for
    entries_unused: int = 0  # source entries for images the store does not hold
    notes: list[str] = field(default_factory=list)

    def missing_A(self) -> np.ndarray:
        return np.isnan(self.values_AI).sum(1)

    def grouping(self, name: str) -> tuple[np.ndarray, list[str] | None]:
        """Each image's group under attribute ``name`` (nan unknown) and the groups' names: a binary or numeric
        attribute groups by its values (names None); a categorical one, ``colour`` of ``colour=red`` and
        ``colour=blue``, by its categories, numbered in the order of ``names``."""
        if name in self.names:
            return self.values_AI[self.names.index(name)], None
        columns = [i for i, n in enumerate(self.names) if n.startswith(f"{name}=")]
        if not columns:
            raise ClipsaeError(f"{name!r} is not among the attributes ({', '.join(self.names)})")
        onehot_CI = self.values_AI[columns]
        known = ~np.isnan(onehot_CI).any(0) & (np.nan_to_num(onehot_CI).sum(0) == 1)
        group_I = np.where(known, np.nan_to_num(onehot_CI).argmax(0), np.nan)
        return group_I, [self.names[i].split("=", 1)[1] for i in columns]

    def summary(self) -> list[str]:
        n_bin = int(self.binary.sum())
        lines = [f"attributes from {self.source}: {n_bin} binary, {len(self.names) - n_bin} numeric; "
                 f"{self.images_unnamed} store images have no entry, {self.entries_unused} entries name images "
                 f"not in the store"]
        missing = self.missing_A()
        gaps = [f"{n} ({m})" for n, m in zip(self.names, missing) if m]
        if gaps:
            lines.append("unknown values per attribute (left out of its statistics): " + ", ".join(gaps[:12])
                         + (f" and {len(gaps) - 12} more" if len(gaps) > 12 else ""))
        return lines + self.notes


def _cell(v) -> float | str | None:
    """A value as a number, a text, or None when missing."""
    if v is None:
        return None
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return None if isinstance(v, float) and math.isnan(v) else float(v)
    text = str(v).strip()
    if text.lower() in MISSING:
        return None
    try:
        return float(text)
    except ValueError:
        return {"true": 1.0, "false": 0.0}.get(text.lower(), text)


def _columns(name: str, cells: list) -> list[tuple[str, np.ndarray, bool]]:
    """One raw column (cells over the store's images, None where unknown) as attributes."""
    known = [c for c in cells if c is not None]
    if any(isinstance(c, str) for c in known):
        out = []
        for value in sorted({str(c) for c in known}):
            col = np.array([np.nan if c is None else float(str(c) == value) for c in cells])
            out.append((f"{name}={value}", col, True))
        return out
    col = np.array([np.nan if c is None else c for c in cells], dtype=np.float64)
    distinct = set(np.unique(col[~np.isnan(col)]).tolist())
    if distinct <= {-1.0, 1.0} and -1.0 in distinct:
        col = np.where(col == -1.0, 0.0, col)
        distinct = {0.0, 1.0} & set(np.unique(col[~np.isnan(col)]).tolist())
    return [(name, col, distinct <= {0.0, 1.0})]


def _build(store: ActivationStore, rows: dict[str, dict], names: list[str], source: str) -> Attributes:
    keys = [str(k) for k in store.keys()]
    found = [rows.get(k) for k in keys]
    unnamed = sum(r is None for r in found)
    unused = len(set(rows) - set(keys))
    if rows and unnamed == len(keys):
        example = next(iter(rows))
        raise ClipsaeError(f"{source}: none of its {len(rows):,} keys is the key of an image in the store "
                           f"(its first is {example!r}; the store's first is {keys[0]!r})")
    attrs: list[tuple[str, np.ndarray, bool]] = []
    for name in names:
        attrs += _columns(name, [None if r is None else _cell(r.get(name)) for r in found])
    notes = []
    kept = []
    for a in attrs:
        known = a[1][~np.isnan(a[1])]
        if a[2] and (len(known) == 0 or known.min() == known.max()):
            notes.append(f"attribute {a[0]} left out: every known image has the same value")
        elif not a[2] and len(np.unique(known)) < 2:
            notes.append(f"attribute {a[0]} left out: fewer than two distinct values")
        else:
            kept.append(a)
    if not kept:
        raise ClipsaeError(f"{source}: no attribute varies over the store's images" + (f" ({notes[0]})" if notes else ""))
    return Attributes([a[0] for a in kept], np.stack([a[1] for a in kept]), np.array([a[2] for a in kept]), source,
                      unnamed, unused, notes)


def _store_key(key: str) -> str:
    """A CSV's image name as a webdataset key: CelebA-style ``000001.jpg`` names sample ``000001``."""
    low = key.lower()
    return key[: -len(next(s for s in IMAGE_SUFFIXES if low.endswith(s)))] if low.endswith(IMAGE_SUFFIXES) else key


def from_options(store: ActivationStore, csv_path: Path | None, json_fields: str | None, shards: Path | None = None,
                 needed_by: str = "") -> Attributes:
    """The attributes ``--attributes FILE`` or ``--attributes-json a,b`` name (exactly one of them)."""
    if (csv_path is None) == (json_fields is None):
        raise ClipsaeError(f"{needed_by}give --attributes FILE or --attributes-json FIELDS (one of them)")
    if csv_path is not None:
        return from_csv(store, csv_path)
    return from_tars(store, [f.strip() for f in json_fields.split(",") if f.strip()], shards)


def from_csv(store: ActivationStore, path: Path) -> Attributes:
    """Attributes from a CSV whose ``key`` (or ``__key__``, else first) column names each image."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            key_col = next((c for c in header if c in KEY_COLUMNS), header[0] if header else None)
            if key_col is None or len(header) < 2:
                raise ClipsaeError(f"{path} needs a header with a key column and at least one attribute column")
            rows = {}
            for line, r in enumerate(reader, start=2):
                k = _store_key(str(r[key_col]).strip())
                if k in rows:
                    raise ClipsaeError(f"{path}, line {line}: key {k!r} appears twice")
                rows[k] = r
    except FileNotFoundError:
        raise ClipsaeError(f"--attributes {path}: no such file") from None
    except UnicodeDecodeError:
        raise ClipsaeError(f"--attributes {path} is not a UTF-8 CSV file") from None
    return _build(store, rows, [c for c in header if c != key_col], str(path))


def from_tars(store: ActivationStore, fields: list[str], shards: Path | None = None) -> Attributes:
    """Attributes from top-level fields of each sample's .json, read once from the tars the store names."""
    from clipsae.analysis.images import require_tar
    from clipsae.pipeline.tario import iter_json

    rows: dict[str, dict] = {}
    for part in store.parts:
        for key, meta in iter_json(str(require_tar(part, shards))):
            rows[key] = meta or {}
    absent = [f for f in fields if not any(f in r for r in rows.values())]
    if absent:
        raise ClipsaeError(f"no sample's .json has the field {absent[0]!r}"
                           + (f" (fields seen: {', '.join(sorted({k for r in rows.values() for k in r})[:12])})"
                              if rows else ""))
    return _build(store, rows, fields, "the samples' .json in the store's tars")
