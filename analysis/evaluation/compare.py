"""``clipsae analyze compare``: one row of fit, sparsity and interpretability figures per codes, side by side.

Which layer to study, which run to keep: CLIP-Scope chose its layer this way (the most
monosemantic one, whose features also fire most often). Each row is computed from that codes'
cached sums and per-image values; nothing is encoded again.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsae.analysis.defaults import ENTROPY_K
from clipsae.analysis.evaluation.absorption import SUMMARY as ABSORPTION_SUMMARY
from clipsae.analysis.evaluation.patch_probe import SUMMARY_FILE as PATCH_PROBE_FILE
from clipsae.analysis.evaluation.sparse_probe import DEFAULT_KS as PROBE_KS
from clipsae.analysis.evaluation.sparse_probe import summary_file
from clipsae.analysis.evaluation.stability import (
    THRESHOLD,
    clipsae_section,
    initial_decoder_of,
    seed_stability,
    unseeded_label,
)
from clipsae.analysis.features.fit import fit as store_fit
from clipsae.analysis.features.label_entropy import label_entropy
from clipsae.analysis.features.monosemanticity import embedding_hook, monosemanticity
from clipsae.analysis.features.top_images import top_images
from clipsae.analysis.output import by_setting
from clipsae.analysis.report.siblings import splice_result
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes, default_analysis_dir

COLUMNS = ("store", "codes", "hook", "layer", "sae", "latents", "k", "tokens", "l0", "fvu", "explained_variance", "dead_share",
           "dense_share", "median_density", "median_label_entropy", "median_ms", "spliced_cosine", "ce_recovered",
           "ce_recovered_mean", "kl", "sparse_probe_k1", "sparse_probe_k2", "sparse_probe_k5", "dense_probe", "patch_map",
           "patch_purity_16", "patch_coverage_0.3", "absorption_rate", "full_absorption_rate", "split_count", "seeds",
           "stability", "stability_init", "live_latents")
# The figures averaged over the seeds of a row; each has a <name>_std column (empty for one seed).
AVERAGED = ("tokens", "l0", "fvu", "explained_variance", "dead_share", "dense_share", "median_density",
            "median_label_entropy", "median_ms", "spliced_cosine", "ce_recovered", "ce_recovered_mean", "kl",
            "sparse_probe_k1", "sparse_probe_k2", "sparse_probe_k5", "dense_probe", "patch_map", "patch_purity_16",
            "patch_coverage_0.3", "absorption_rate", "full_absorption_rate", "split_count")
# From patch_probe.json (``analyze patch-probe``), where it ran; absorption.json gives ABSORPTION_SUMMARY.
PATCH_PROBE = {"patch_map": "map", "patch_purity_16": "purity_16", "patch_coverage_0.3": "coverage_0.3"}
COLUMNS = COLUMNS + tuple(f"{c}_std" for c in AVERAGED) + ("sae_path",)
SPLICE_ZERO_SHOT = ("ce_recovered", "ce_recovered_mean", "kl")  # from splice.json's zero_shot, where splice ran
# Below this many encoded tokens the fit figures of a row move by more than the differences compared.
MIN_TOKENS = 10_000
# compare.md's columns: the figures a paper's table shows (compare.csv has them all).
MARKDOWN = ("codes", "hook", "sae", "latents", "k", "tokens", "l0", "fvu", "dead_share", "median_label_entropy",
            "median_ms", "ce_recovered", "kl", "sparse_probe_k1", "sparse_probe_k5", "dense_probe", "patch_map",
            "patch_purity_16", "absorption_rate", "full_absorption_rate", "seeds", "stability", "stability_init")
# Drawn side by side, one panel each, against the layer.
PLOTTED = (("l0", "L0 (active latents per token)"), ("explained_variance", "explained variance"),
           ("dead_share", "dead share"), ("median_density", "median image density (live)"),
           ("median_label_entropy", "median label entropy (nats)"), ("median_ms", "median monosemanticity"))


@dataclass(frozen=True)
class Row:
    """One codes' figures (or the mean of several seeds'), in :data:`COLUMNS` order; nan where a figure
    could not be had (see ``notes``). ``seed_group`` is what its SAE shares with other seeds (None: an SAE
    whose files do not say), ``codes`` the codes it was computed from and ``sections`` their SAEs' clipsae
    blocks of cfg.json (None for other tools' SAEs)."""

    values: dict
    notes: list[str]
    seed_group: str | None = None
    codes: tuple = ()
    sections: tuple = ()

    def cells(self) -> list:
        return [self.values.get(c, float("nan")) for c in COLUMNS]


def layer_of(hook: str) -> int | None:
    """The block index a hook name ends in (``resid.20`` → 20), None for pooled and named hooks."""
    m = re.fullmatch(r"(?:resid|blocks|layer)\.?(\d+)", hook)
    return int(m.group(1)) if m else None


def _median(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else float("nan")


def _summary(path: Path) -> dict:
    """An analysis's summary JSON, or {} where the analysis did not run."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _figure(summary: dict, key: str) -> float:
    value = summary.get(key)
    return float("nan") if value is None else float(value)


def summarise(codes: Codes, by: str, min_hits: int, embed_hook: str | None, device) -> Row:
    """The figures of one codes: fit from the cached sums, label entropy of the top images, and the
    monosemanticity score where the store has image embeddings."""
    store, sae, notes = codes.store, codes.identity["sae"], []
    sums = codes.sums()
    f = store_fit(sums, codes.n_positions)
    tokens = sums.n_images * codes.n_positions
    if tokens < MIN_TOKENS:
        notes.append(f"note: {codes.name}'s fit figures rest on {tokens:,} encoded tokens, fewer than {MIN_TOKENS:,}: "
                     f"differences between rows this small are noise")
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
    analysis = default_analysis_dir(store.path, codes.name)
    splice = splice_result(analysis)
    spliced = splice["cosine_spliced"]["mean"] if splice and "cosine_spliced" in splice else float("nan")
    zero_shot = (splice or {}).get("zero_shot") or {}
    probing = _summary(analysis / summary_file(by))
    patches = _summary(analysis / PATCH_PROBE_FILE)
    absorbed = _summary(analysis / by_setting("absorption", ".json", by))
    section = clipsae_section(codes.identity.get("provenance", {}).get("sae_path"))
    values = {"store": str(store.path), "codes": codes.name, "hook": codes.hook, "layer": layer_of(codes.hook),
              "sae": f"{(section or {}).get('spec', {}).get('arch') or sae.get('architecture')} ({sae.get('format')})", "latents": codes.d_sae, "k": sae.get("k"),
              "tokens": tokens,
              "l0": f.l0, "fvu": f.fvu, "explained_variance": 1 - f.fvu, "dead_share": f.dead / codes.d_sae,
              "dense_share": f.dense / codes.d_sae,
              "median_density": float(np.median(density_images[live])) if live.any() else float("nan"),
              "median_label_entropy": _median(ent.entropy_F), "median_ms": ms, "spliced_cosine": spliced,
              **{c: zero_shot.get(c, float("nan")) for c in SPLICE_ZERO_SHOT},
              **{f"sparse_probe_k{k}": probing.get("accuracy", {}).get(str(k), float("nan")) for k in PROBE_KS},
              "dense_probe": _figure(probing, "dense_accuracy"),
              **{c: _figure(patches, key) for c, key in PATCH_PROBE.items()},
              **{c: _figure(absorbed, c) for c in ABSORPTION_SUMMARY},
              "seeds": 1, "stability": float("nan"), "stability_init": float("nan"), "live_latents": float("nan"),
              "sae_path": codes.identity.get("provenance", {}).get("sae_path")}
    return Row(values, notes, seed_group(codes, section), (codes,), (section,))


def _varies_by_layer(rows: list[Row]) -> bool:
    layers = [r.values["layer"] for r in rows]
    return None not in layers and len(set(layers)) > 1


def seed_group(codes: Codes, section: dict | None) -> str | None:
    """What a clipsae SAE's codes share with the codes of its other seeds: the store, hook and tokens, and
    every setting its cfg.json ``section`` records but the seed (and the input scale, which the data order
    moves); None for other tools' SAEs."""
    if section is None:
        return None
    spec = {k: v for k, v in section.get("spec", {}).items() if k != "seed"}
    rest = {k: v for k, v in section.items() if k not in ("seed", "scale", "spec", "label")}
    return json.dumps({"store": str(codes.store.path), "hook": codes.hook, "tokens": codes.identity.get("tokens"),
                       "spec": spec, "label": unseeded_label(section), **rest}, sort_keys=True)


def by_seed(rows: list[Row], device) -> tuple[list[Row], list[str]]:
    """Rows whose SAEs differ only by their seed, made one: each averaged figure's mean and standard
    deviation over the seeds, ``seeds``, and the seed stability of their live latents (with the overlap
    their initial weights had); the others as they are. Also lines saying what was merged."""
    from clipsae.analysis.codes_sae import codes_sae

    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.seed_group if r.seed_group is not None else i, []).append(r)
    out, lines = [], []
    for members in groups.values():
        if len(members) == 1:
            out.append(members[0])
            continue
        codes = [c for r in members for c in r.codes]
        values = dict(members[0].values)
        values["codes"] = "+".join(c.name for c in codes)
        values["seeds"] = len(members)
        for col in AVERAGED:
            xs = np.array([r.values[col] for r in members], dtype=float)
            known = xs[~np.isnan(xs)]
            values[col] = float(known.mean()) if len(known) else float("nan")
            values[f"{col}_std"] = float(known.std(ddof=1)) if len(known) > 1 else float("nan")
        saes = [codes_sae(c, device=str(device)) for c in codes]
        live = [c.sums().latent_tokens_fired > 0 for c in codes]
        sections = [s for r in members for s in r.sections]
        initial = [initial_decoder_of(s) if s is not None else None for s in sections]
        st = seed_stability([sae.W_dec.detach().float().cpu() for sae in saes], live, initial)
        values.update({"stability": st["stability"], "stability_init": st["stability_init"], "live_latents": st["live"]})
        lines.append(f"{values['codes']}: {len(members)} seeds of one SAE in one row (mean ± std); of their live "
                     f"latents (≈{st['live']:.0f} each) {st['stability']:.1%} are matched one-to-one at cosine ≥ "
                     f"{THRESHOLD} across seeds, against {st['stability_init']:.1%} for the same latents' initial "
                     f"weights")
        out.append(Row(values, [n for r in members for n in r.notes], members[0].seed_group, tuple(codes),
                       tuple(sections)))
    return out, lines


def plot_compare(rows: list[Row], path: Path) -> Path:
    """Against what varies: where the rows sit on several layers, one panel per figure of :data:`PLOTTED`
    against the layer (codes of one SAE family share a line); where they share one (SAEs, baselines,
    snapshots of a hook), the panels a paper shows: FVU against L0, CE recovered against L0 and sparse-probe
    accuracy against k, the last two where they ran. Each point is labelled with its codes name."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    panels = _layer_panels(rows) if _varies_by_layer(rows) else _hook_panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for ax, draw in zip(axes[0], panels):
        draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _families(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.values["sae"], []).append(r)
    return out


def _layer_panels(rows: list[Row]) -> list:
    def panel(col: str, label: str):
        def draw(ax):
            for sae, mine in _families(rows).items():
                pts = sorted((r.values["layer"], r.values[col]) for r in mine)
                ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=sae)
            for r in rows:
                ax.annotate(r.values["codes"], (r.values["layer"], r.values[col]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            ax.set_xlabel("layer")
            ax.set_title(label, fontsize=9)
            ax.legend(fontsize=7)
        return draw

    return [panel(col, label) for col, label in PLOTTED]


def _hook_panels(rows: list[Row]) -> list:
    def against_l0(col: str, label: str):
        def draw(ax):
            for sae, mine in _families(rows).items():
                ax.errorbar([r.values["l0"] for r in mine], [r.values[col] for r in mine], fmt="o", label=sae,
                            yerr=[np.nan_to_num(r.values.get(f"{col}_std", float("nan"))) for r in mine],
                            xerr=[np.nan_to_num(r.values.get("l0_std", float("nan"))) for r in mine])
            for r in rows:
                ax.annotate(r.values["codes"], (r.values["l0"], r.values[col]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("L0 (active latents per token)")
            ax.set_title(label, fontsize=9)
            ax.legend(fontsize=7)
        return draw

    def probe_against_k(ax):
        for r in rows:
            pts = [(k, r.values[f"sparse_probe_k{k}"]) for k in PROBE_KS if not _nan(r.values[f"sparse_probe_k{k}"])]
            if not pts:
                continue
            line, = ax.plot([k for k, _ in pts], [a for _, a in pts], "o-", label=r.values["codes"])
            if not _nan(r.values["dense_probe"]):
                ax.axhline(r.values["dense_probe"], color=line.get_color(), ls=":", lw=1)
        ax.set_xlabel("k (features per probe)")
        ax.set_title("sparse-probe test accuracy (dotted: dense)", fontsize=9)
        ax.legend(fontsize=7)

    panels = [against_l0("fvu", "FVU")]
    if any(not _nan(r.values["ce_recovered"]) for r in rows):
        panels.append(against_l0("ce_recovered", "CE recovered (zero-shot)"))
    if any(not _nan(r.values[f"sparse_probe_k{k}"]) for r in rows for k in PROBE_KS):
        panels.append(probe_against_k)
    return panels


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _cell(v) -> str:
    if _nan(v):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"  # a count averaged over seeds prints as the counts of single runs do
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _with_std(r: Row, col: str) -> str:
    """A cell, with ± its standard deviation over seeds where the row has several."""
    std = r.values.get(f"{col}_std", float("nan"))
    # A count the seeds share (the tokens encoded) is one number, not "± 0".
    same_count = std == 0 and isinstance(r.values[col], float) and r.values[col].is_integer()
    return _cell(r.values[col]) + (f" ± {std:.2g}" if not _nan(std) and not _nan(r.values[col]) and not same_count else "")


def markdown_table(rows: list[Row]) -> str:
    """compare.md: the :data:`MARKDOWN` columns, a row per codes (or seeds of one SAE, mean ± standard
    deviation); a figure that did not run is empty."""
    lines = ["| " + " | ".join(MARKDOWN) + " |", "|" + "---|" * len(MARKDOWN)]
    lines += ["| " + " | ".join(_with_std(r, c).replace("|", "\\|") for c in MARKDOWN) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: list[Row]) -> list[str]:
    """The printed table, each column as wide as its widest cell."""
    cols = ("codes", "hook", "latents", "l0", "fvu", "dead_share", "median_label_entropy", "median_ms", "ce_recovered",
            "sparse_probe_k1")
    heads = ("codes", "hook", "latents", "L0", "FVU", "dead", "entropy", "MS", "CE rec.", "probe k=1")
    cells = [[_cell(r.values[c]) if c != "dead_share" or _nan(r.values[c]) else f"{r.values[c]:.1%}" for c in cols]
             for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return [fmt(heads)] + [fmt(row) for row in cells]


_PAGE_STYLE = ("body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d1d1f}table{border-collapse:collapse}"
               "td,th{padding:3px 10px;border-bottom:1px solid #e3e3e3;text-align:left}td.num{text-align:right;"
               "font-variant-numeric:tabular-nums}img{max-width:100%;margin-top:16px}li{color:#555}")


def html_page(rows: list[Row], png_name: str, notes: list[str], title: str = "clipsae compare") -> str:
    """compare.html: the table a paper shows (mean ± std over seeds, empty where a figure did not run),
    its plots (``png_name`` beside it) and the notes; a static page, opened from disk."""
    import html

    def cell(r: Row, c: str) -> str:
        v = r.values.get(c)
        cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
        return f"<td{cls}>{html.escape(_with_std(r, c))}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in MARKDOWN)
    body = "".join("<tr>" + "".join(cell(r, c) for c in MARKDOWN) + "</tr>" for r in rows)
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<table id="compare"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f"{f'<ul>{items}</ul>' if items else ''}"
            f'<img id="plots" src="{html.escape(png_name)}" alt="the figures against what varies"></body></html>\n')
