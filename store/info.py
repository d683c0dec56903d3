"""A store's summary, as a dict for ``--json`` and as text for people."""

import numpy as np

from clipsae.store import layout
from clipsae.store.location import storage_of
from clipsae.store.reader import ActivationStore


def summarize(store: ActivationStore) -> dict:
    """Identity, counts, per-hook shapes and statistics, failures and incomplete parts."""
    labels = store.labels()
    failures = sum(int(p.attrs.get("n_failed", 0)) for p in store.parts)
    truncated = [p.name for p in store.parts if p.attrs.get("truncated")]
    hooks = {}
    for h in store.hooks:
        stats = store.hook_stats(h)
        hooks[h] = {
            "shape": [store.n_images, store.n_tokens(h), store.d(h)],
            "meaning": store.config["hooks"][h].get("meaning", ""),
            **stats.to_json(),
        }
    return {
        "path": str(store.path),
        "model": store.config.get("model"),
        "pretrained": store.config.get("pretrained"),
        "tokens": store.config.get("tokens"),
        "dtype": store.config.get("dtype"),
        "n_images": store.n_images,
        "n_labelled": int(np.count_nonzero(labels >= 0)),
        "n_classes": int(len(np.unique(labels[labels >= 0]))),
        "format_version": store.format_version,
        "parts_complete": len(store.parts),
        "parts_incomplete": store.incomplete_parts,
        "parts_damaged": store.damaged_parts,
        "images_failed": failures,
        "parts_truncated": truncated,
        "disk_bytes": storage_of(store.path).disk_bytes(store.path),
        "hooks": hooks,
        "mask_classes": len(store.mask_classes() or {}),
        "patch_grids": [layout.grid_name(g) for g in store.patch_grids()],
        "integrity": {"checked": False, "problems": []},
    }


def _integrity_line(integrity: dict) -> str:
    if not integrity["checked"]:
        return "chunks     not read here: `clipsae store verify` (or `store info --verify`) checks each against its CRC32C"
    problems = integrity["problems"]
    if not problems:
        return "chunks     every chunk read and intact (CRC32C)"
    return f"chunks     {len(problems)} DAMAGED: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def format_summary(s: dict) -> str:
    """The summary as a few aligned lines."""
    lines = [
        f"store      {s['path']}",
        f"model      {s['model']}  pretrained={s['pretrained']}  tokens={s['tokens']}  dtype={s['dtype']}",
        f"images     {s['n_images']}  ({s['n_labelled']} labelled, {s['n_classes']} classes; "
        f"{s['images_failed']} unreadable skipped)",
        f"parts      {s['parts_complete']} complete, {len(s['parts_incomplete'])} incomplete"
        + (f", {len(s['parts_truncated'])} from truncated tars" if s["parts_truncated"] else "")
        + (f", {len(s['parts_damaged'])} DAMAGED (run `clipsae store verify`)" if s["parts_damaged"] else "")
        + f"  (store format {s['format_version']})",
        f"disk       {s['disk_bytes'] / 2**20:.1f} MiB",
        f"patches    labelled from segmentation masks: {s['mask_classes']} classes, grid(s) {', '.join(s['patch_grids'])}"
        if s["patch_grids"] else "patches    no patch labels (extracted without segmentation masks)",
        _integrity_line(s["integrity"]),
    ]
    for h, v in s["hooks"].items():
        n, t, d = v["shape"]
        lines.append(
            f"  {h:<12} ({n}, {t}, {d})  mean‖x‖={v['mean_norm']:.3g}  max|x|={v['max_abs']:.3g}  "
            f"non-finite={v['nonfinite']}"
        )
    return "\n".join(lines)
