"""What other analyses of the same codes left beside them, for the report to show:
correlate matchings, feature names, attribute probes, segmented classes and the spliced check."""

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clipsae.analysis.output import CORRELATE_PAIR, CORRELATE_PREFIX, NAMES_FILE, NEURON_ALIGNMENT_FILE, PROBE_FILE, SPLICE_FILE
from clipsae.store.codes import default_analysis_dir

REPORT_DIR = "report"
NAMES_SHOWN = 3
ATTRIBUTES_SHOWN = 3
SEGMENTS_SHOWN = 3
PATCH_PROBE_FILE = "patch_probe.csv"  # analysis/evaluation/patch_probe.py at the default --min-share


@dataclass(frozen=True)
class Matching:
    """One correlate run with these codes as side A: A feature → (B feature, r), and where B's report is."""

    label: str
    folder: Path
    other_report: Path
    b_of_a: dict[int, tuple[int, float]]
    other_store: str = ""
    other_codes: str = ""


def report_dir(store: Path, codes: str) -> Path:
    """Where ``analyze report`` writes by default: beside the codes' other analyses."""
    return default_analysis_dir(store, codes) / REPORT_DIR


def matchings(analysis: Path) -> list[Matching]:
    """Every ``correlate-*`` folder under ``analysis`` that holds a matching and says what it compared."""
    found = []
    for folder in sorted(analysis.glob(f"{CORRELATE_PREFIX}*")):
        pair, table = folder / CORRELATE_PAIR, folder / "matching.csv"
        if not (pair.is_file() and table.is_file()):
            continue
        b = json.loads(pair.read_text())["b"]
        with open(table, newline="") as fh:
            rows = {int(r["a"]): (int(r["b"]), float(r["corr"])) for r in csv.DictReader(fh)}
        label = f"{b.get('model') or Path(b['store']).name}, {b['codes']} ({b['hook']})"
        found.append(Matching(label, folder, report_dir(Path(b["store"]), b["codes"]), rows, b["store"], b["codes"]))
    return found


def _rows(path: Path) -> Iterator[dict]:
    """The rows of a CSV an analysis left beside the codes, one at a time (patch_probe.csv has millions);
    none where it did not run."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        yield from csv.DictReader(fh)


def feature_names(analysis: Path) -> dict[int, list[tuple[str, float, str]]]:
    """names.csv from ``analyze name-features``: each feature's best words, (word, score, method)."""
    out: dict[int, list[tuple[str, float, str]]] = {}
    for r in _rows(analysis / NAMES_FILE):
        if int(r["rank"]) <= NAMES_SHOWN:
            out.setdefault(int(r["feature"]), []).append((r["word"], float(r["score"]), r["method"]))
    return out


def probed_attributes(analysis: Path) -> dict[int, list[tuple[str, str, float]]]:
    """probe.csv from ``analyze probe``: each feature's attributes it predicts best, (attribute, statistic,
    value), by |AUROC − ½| for binary attributes and |Spearman's ρ| for numeric ones."""
    ranked: dict[int, list[tuple[float, str, str, float]]] = {}
    for r in _rows(analysis / PROBE_FILE):
        stat, value = ("AUROC", r["auroc"]) if r["auroc"] else ("Spearman", r["spearman"])
        if not value:
            continue
        v = float(value)
        strength = abs(v - 0.5) if stat == "AUROC" else abs(v)
        ranked.setdefault(int(r["feature"]), []).append((-strength, r["attribute"], stat, v))
    return {f: [(a, s, v) for _, a, s, v in sorted(rows)[:ATTRIBUTES_SHOWN]] for f, rows in ranked.items()}


def segmented_classes(analysis: Path) -> dict[int, list[tuple[str, float, float]]]:
    """patch_probe.csv from ``analyze patch-probe``: each feature's classes it segments best, (class, AP,
    probe_r), by AP (ties in the file's order)."""
    ranked: dict[int, list[tuple[float, str, float]]] = {}
    for r in _rows(analysis / PATCH_PROBE_FILE):
        ranked.setdefault(int(r["feature"]), []).append((-float(r["ap"]), r["class"], float(r["probe_r"])))
    return {f: [(c, -ap, pr) for ap, c, pr in sorted(rows, key=lambda r: r[0])[:SEGMENTS_SHOWN]]
            for f, rows in ranked.items()}


def neuron_alignment(analysis: Path) -> dict[int, tuple[float, int, bool]]:
    """neuron_alignment.csv from ``analyze neuron-alignment``: each feature's (best |cosine| with an MLP neuron's
    output direction, that neuron, whether it is above the random directions' level)."""
    return {int(r["feature"]): (float(r["max_cos"]), int(r["neuron"]), r["above_random"] in ("1", "True", "true"))
            for r in _rows(analysis / NEURON_ALIGNMENT_FILE)}


def splice_result(analysis: Path) -> dict | None:
    """splice.json from ``analyze splice``, if it was run."""
    path = analysis / SPLICE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def relative_link(target: Path, from_dir: Path) -> str:
    """A link from a page in ``from_dir`` to ``target`` that works when both are opened from disk."""
    return Path(os.path.relpath(Path(target).resolve(), Path(from_dir).resolve())).as_posix()


@dataclass(frozen=True)
class UniversalLatents:
    """``analyze universal``'s figures for the codes of one model of a universal SAE: per latent, its row of
    universal.csv, and each model's top image keys; ``model`` is this codes' model, ``hooks`` each model's hook."""

    model: int
    hooks: dict[int, str]
    rows: dict[int, dict]
    top_keys: dict[int, dict[int, list[str]]]


def universal_latents(analysis: Path) -> UniversalLatents | None:
    """What ``analyze universal`` found of these codes' latents, where it was run on them (its link beside them)."""
    link = analysis / "universal_link.json"
    if not link.is_file():
        return None
    where = json.loads(link.read_text())
    folder = Path(where["folder"])
    if not (folder / "universal.csv").is_file():
        return None
    summary = json.loads((folder / "universal.json").read_text())
    rows = {int(r["latent"]): r for r in _rows(folder / "universal.csv")}
    top: dict[int, dict[int, list[str]]] = {}
    for r in _rows(folder / "universal_top.csv"):
        top.setdefault(int(r["latent"]), {}).setdefault(int(r["model"]), []).append(r["key"])
    return UniversalLatents(int(where["model"]), {m["model"]: m["hook"] for m in summary["models"]}, rows, top)
