"""``clipsae analyze compare``: one row of fit, sparsity and interpretability figures per codes, side by side.

Which layer to study, which run to keep: CLIP-Scope chose its layer this way (the most
monosemantic one, whose features also fire most often). Each row is computed from that codes'
cached sums and per-image values; nothing is encoded again.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsae.analysis.defaults import ENTROPY_K
from clipsae.analysis.fit import fit as store_fit
from clipsae.analysis.label_entropy import label_entropy
from clipsae.analysis.monosemanticity import embedding_hook, monosemanticity
from clipsae.analysis.report.siblings import splice_result
from clipsae.analysis.top_images import top_images
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes, default_analysis_dir

COLUMNS = ("store", "codes", "hook", "layer", "sae", "latents", "k", "l0", "fvu", "explained_variance", "dead_share",
           "dense_share", "median_density", "median_label_entropy", "median_ms", "spliced_cosine", "ce_recovered",
           "ce_recovered_mean", "kl", "sparse_probe_k1", "sparse_probe_k2", "sparse_probe_k5", "dense_probe", "sae_path")
SPLICE_ZERO_SHOT = ("ce_recovered", "ce_recovered_mean", "kl")  # from splice.json's zero_shot, where splice ran
# Drawn side by side, one panel each, against the layer.
PLOTTED = (("l0", "L0 (active latents per token)"), ("explained_variance", "explained variance"),
           ("dead_share", "dead share"), ("median_density", "median image density (live)"),
           ("median_label_entropy", "median label entropy (nats)"), ("median_ms", "median monosemanticity"))


@dataclass(frozen=True)
class Row:
    """One codes' figures, in :data:`COLUMNS` order; nan where a figure could not be had (see ``notes``)."""

    values: dict
    notes: list[str]

    def cells(self) -> list:
        return [self.values[c] for c in COLUMNS]


def layer_of(hook: str) -> int | None:
    """The block index a hook name ends in (``resid.20`` → 20), None for pooled and named hooks."""
    m = re.fullmatch(r"(?:resid|blocks|layer)\.?(\d+)", hook)
    return int(m.group(1)) if m else None


def _median(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else float("nan")


def _sparse_probe_summary(analysis: Path, by: str) -> dict:
    """sparse_probe.json of ``analyze sparse-probe --by by`` on these codes, or {} where it did not run."""
    import json

    from clipsae.analysis.output import by_setting

    path = analysis / by_setting("sparse_probe", ".json", by)
    return json.loads(path.read_text()) if path.is_file() else {}


def summarise(codes: Codes, by: str, min_hits: int, embed_hook: str | None, device) -> Row:
    """The figures of one codes: fit from the cached sums, label entropy of the top images, and the
    monosemanticity score where the store has image embeddings."""
    store, sae, notes = codes.store, codes.identity["sae"], []
    sums = codes.sums()
    f = store_fit(sums, codes.n_positions)
    live = sums.latent_tokens_fired > 0
    density_images = sums.latent_images_fired / max(sums.n_images, 1)
    ent = label_entropy(top_images(codes, ENTROPY_K, by), store.labels(), min_hits)
    try:
        ms = monosemanticity(codes, embedding_hook(store, embed_hook), by, device).median()
    except ClipsaeError as exc:
        if embed_hook is not None:
            raise
        ms = float("nan")
        notes.append(f"no monosemanticity for {codes.name}: {exc}")
    splice = splice_result(default_analysis_dir(store.path, codes.name))
    spliced = splice["cosine_spliced"]["mean"] if splice and "cosine_spliced" in splice else float("nan")
    zero_shot = (splice or {}).get("zero_shot") or {}
    probing = _sparse_probe_summary(default_analysis_dir(store.path, codes.name), by)
    values = {"store": str(store.path), "codes": codes.name, "hook": codes.hook, "layer": layer_of(codes.hook),
              "sae": f"{sae.get('architecture')} ({sae.get('format')})", "latents": codes.d_sae, "k": sae.get("k"),
              "l0": f.l0, "fvu": f.fvu, "explained_variance": 1 - f.fvu, "dead_share": f.dead / codes.d_sae,
              "dense_share": f.dense / codes.d_sae,
              "median_density": float(np.median(density_images[live])) if live.any() else float("nan"),
              "median_label_entropy": _median(ent.entropy_F), "median_ms": ms, "spliced_cosine": spliced,
              **{c: zero_shot.get(c, float("nan")) for c in SPLICE_ZERO_SHOT},
              **{f"sparse_probe_k{k}": probing.get("accuracy", {}).get(str(k), float("nan")) for k in (1, 2, 5)},
              "dense_probe": probing.get("dense_accuracy") if probing.get("dense_accuracy") is not None else float("nan"),
              "sae_path": codes.identity.get("provenance", {}).get("sae_path")}
    return Row(values, notes)


def plot_compare(rows: list[Row], path: Path) -> Path:
    """One panel per figure of :data:`PLOTTED`, each codes a point at its layer (or its position in the
    list where its hook has none), labelled with its codes name; codes of one SAE family share a line."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(3.2 * len(PLOTTED), 3.4), squeeze=False)
    xs = [r.values["layer"] if r.values["layer"] is not None else i for i, r in enumerate(rows)]
    by_layer = all(r.values["layer"] is not None for r in rows)
    for ax, (col, label) in zip(axes[0], PLOTTED):
        for sae in dict.fromkeys(r.values["sae"] for r in rows):
            mine = sorted((x, r.values[col]) for x, r in zip(xs, rows) if r.values["sae"] == sae)
            ax.plot([x for x, _ in mine], [y for _, y in mine], "o-", label=sae)
        for x, r in zip(xs, rows):
            ax.annotate(r.values["codes"], (x, r.values[col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("layer" if by_layer else "codes (in the order given)")
        ax.set_title(label, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
