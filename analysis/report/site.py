"""The report's files: index.html with its data script, one small HTML page and one JSON per feature,
the shared script and style sheet, thumbnails under images/. Opened from disk, so data travels in
<script> elements (browsers refuse fetch() on file:// pages)."""

import html
import json
import shutil
from importlib import resources
from pathlib import Path

ASSETS = ("report.css", "common.js", "index.js", "feature.js")
MARKER = "report.json"


def script_json(obj) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def copy_assets(out: Path) -> None:
    folder = resources.files("clipsae.analysis.report") / "assets"
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        (out / "assets" / name).write_bytes((folder / name).read_bytes())


def write_index(out: Path, index: dict) -> None:
    """index.html plus data/index.js (the summary, plots' points and the feature table)."""
    (out / "data").mkdir(exist_ok=True)
    (out / "data" / "index.js").write_text(f"window.CLIPSAE_INDEX = {script_json(index)};\n")
    title = html.escape(index["title"])
    (out / "index.html").write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="assets/report.css"></head>
<body><main id="app"><h1>{title}</h1><p>Loading…</p></main>
<script src="data/index.js"></script><script src="assets/common.js"></script><script src="assets/index.js"></script></body></html>
""")


def feature_page(record: dict, assets: str = "../assets") -> str:
    """One feature's page: a shell, its record inline, and the shared script that draws it. ``assets``: where
    the page finds the scripts and style (the report's folder, or the explorer's /assets)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>feature {record['feature']}</title>
<link rel="stylesheet" href="{assets}/report.css"></head>
<body><main id="app"></main>
<script id="feature-data" type="application/json">{script_json(record)}</script>
<script src="{assets}/common.js"></script><script src="{assets}/feature.js"></script></body></html>
"""


def write_feature(folder: Path, record: dict) -> None:
    """features/<f>.html and features/<f>.json."""
    f = record["feature"]
    (folder / f"{f}.html").write_text(feature_page(record))
    (folder / f"{f}.json").write_text(json.dumps(record, separators=(",", ":")))


def write_json_marker(out: Path, info: dict) -> None:
    """report.json: what the report shows; its presence marks the folder as a report that may be replaced."""
    (out / MARKER).write_text(json.dumps(info, indent=1))


def replace_report(partial: Path, out: Path) -> None:
    """Move the finished report into place; an older report there (it has report.json) is replaced."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old)
    else:
        partial.rename(out)
