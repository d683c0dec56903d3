"""The ``clipsae analyze`` commands as functions: open the codes, compute, write CSV and PNG, summarise.

Each returns the lines it would print; the CLI only parses options and prints them.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipsae import files
from clipsae.analysis.defaults import ENTROPY_K, TOP_IMAGES_K
from clipsae.analysis.features import correlate as corr_mod
from clipsae.analysis.features import density as density_mod
from clipsae.analysis.features.label_entropy import DEFAULT_MIN_HITS, check_min_hits, label_entropy
from clipsae.analysis.features.token_mse import plot_token_mse, plot_token_mse_series, snapshot_title, token_mse
from clipsae.analysis.features.top_images import check_k, top_images
from clipsae.analysis.output import (
    CORRELATE_PAIR,
    CORRELATE_PREFIX,
    NEURON_ALIGNMENT_FILE,
    by_setting,
    out_dir,
    remove_stale,
    write_csv,
    write_json,
)
from clipsae.device import resolve_device
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes
from clipsae.store.location import absolute, store_path
from clipsae.store.reader import ActivationStore

TOP_IMAGES_COLUMNS = ("feature", "rank", "image", "key", "label", "value", "token")
LABEL_ENTROPY_COLUMNS = ("feature", "entropy", "entropy_norm", "n", "top_label", "top_label_share")
DENSITY_COLUMNS = ("feature", "tokens_fired", "images_fired", "density_tokens", "density_images", "mean_top20",
                   "dead", "dense")
TOKEN_MSE_COLUMNS = ("token", "role", "row", "col", "mse", "fvu")
TOKEN_MSE_SERIES_COLUMNS = ("codes", "token", "role", "row", "col", "mse", "fvu")
BEST_MATCHES_COLUMNS = ("a", "rank", "b", "corr", "max_diff")
MATCHING_COLUMNS = ("a", "b", "corr", "topk_overlap")
NEURON_ALIGNMENT_COLUMNS = ("feature", "max_cos", "neuron", "above_random")
MONOSEMANTICITY_COLUMNS = ("feature", "ms", "images")
SHOWN_MATCHES, PAIRS_IN_FIGURE, IMAGES_PER_SIDE = 10, 4, 4


@dataclass(frozen=True)
class Target:
    """The codes an analysis reads, and where it writes."""

    store: ActivationStore
    codes: Codes
    out: Path

    @classmethod
    def open(cls, store: Path, codes: str, out: Path | None, progress: bool = False) -> "Target":
        """The codes ``codes`` of ``store``; ``progress``: a bar for each pass over their images."""
        s = ActivationStore.open(store)
        c = Codes(s, codes, progress=progress)
        return cls(s, c, out_dir(out, store, codes))

    @property
    def title(self) -> str:
        return f"{self.codes.name} on {self.codes.hook} ({self.codes.identity['tokens']} tokens, {self.store.n_images} images)"


def parse_features(text: str | None, n_features: int) -> list[int] | None:
    """``"12,625"`` → [12, 625]; None for all. Indices outside 0…n_features−1 are refused."""
    if text is None:
        return None
    try:
        features = [int(x) for x in text.split(",")]
    except ValueError:
        raise ClipsaeError(f"--features must be comma-separated feature indices, not {text!r}") from None
    bad = [f for f in features if not 0 <= f < n_features]
    if bad:
        raise ClipsaeError(f"feature {bad[0]} is out of range: these codes have {n_features} features (0–{n_features - 1})")
    return features


def run_top_images(t: Target, k: int, by: str, features: list[int] | None = None) -> list[str]:
    """top_images.csv: each feature's (or only ``features``') k best images by value, ties to the smaller image."""
    top = top_images(t.codes, k, by)
    keys, labels = t.store.keys(), t.store.labels()
    wanted = np.zeros(t.codes.d_sae, dtype=bool)
    wanted[features if features is not None else slice(None)] = True
    f_idx, r_idx = np.nonzero((top.images_FK >= 0) & wanted[:, None])
    rows = ((int(f), int(r) + 1, int(img), keys[img], int(labels[img]), float(top.values_FK[f, r]), int(top.tokens_FK[f, r]))
            for f, r in zip(f_idx, r_idx) for img in [top.images_FK[f, r]])
    # A table of some features is named apart, so that it never replaces the table of all of them.
    stem = "top_images" if features is None else "top_images_features"
    path = write_csv(t.out / by_setting(stem, ".csv", by, k, TOP_IMAGES_K), TOP_IMAGES_COLUMNS, rows)
    filled = top.filled_F()
    lines = [f"{t.title}: top {k} images by {by} for {int((filled > 0).sum())} of {t.codes.d_sae} features "
             f"({int((filled == 0).sum())} never fired)"]
    for f in features or []:
        shown = [f"{keys[i]} ({v:.3g})" for i, v in zip(top.images_FK[f], top.values_FK[f]) if i >= 0]
        lines.append(f"feature {f}: " + (", ".join(shown) if shown else "never fired"))
    return lines + [f"wrote {path}"]


def run_label_entropy(t: Target, k: int, by: str, min_hits: int = DEFAULT_MIN_HITS) -> list[str]:
    """label_entropy.csv: Fry's entropy of the labels of each feature's top-k images."""
    check_k(k)
    check_min_hits(min_hits)
    ent = label_entropy(top_images(t.codes, k, by), t.store.labels(), min_hits)
    rows = ((f, ent.entropy_F[f], ent.entropy_norm_F[f], int(ent.n_F[f]),
             int(ent.top_label_F[f]) if ent.n_F[f] else None, ent.top_label_share_F[f]) for f in range(t.codes.d_sae))
    path = write_csv(t.out / by_setting("label_entropy", ".csv", by, k, ENTROPY_K), LABEL_ENTROPY_COLUMNS, rows)
    known = ~np.isnan(ent.entropy_F)
    lines = [f"{t.title}: label entropy over the top {k} images by {by}, {ent.n_labels} distinct labels in the store"]
    if known.any():
        lines.append(f"{int(known.sum())} features with ≥ {min_hits} labelled top images: median entropy "
                     f"{np.median(ent.entropy_F[known]):.3f} nats; {int((ent.entropy_F[known] == 0).sum())} single-label")
    else:
        lines.append(f"no feature has {min_hits} labelled top images (see --min-hits); entropy left empty")
    return lines + [f"wrote {path}"]


def run_density(t: Target, by: str, min_hits: int = DEFAULT_MIN_HITS) -> list[str]:
    """density.csv plus the density histogram and Fry's density/strength scatter."""
    sums = t.codes.sums()
    top = top_images(t.codes, density_mod.TOP_FOR_MEAN, by)
    dens = density_mod.density(sums, t.codes.n_positions, top)
    ent = label_entropy(top, t.store.labels(), min_hits)
    rows = ((f, int(dens.tokens_fired_F[f]), int(dens.images_fired_F[f]), float(dens.density_tokens_F[f]),
             float(dens.density_images_F[f]), dens.mean_top_F[f], int(dens.dead_F[f]), int(dens.dense_F[f]))
            for f in range(t.codes.d_sae))
    path = write_csv(t.out / by_setting("density", ".csv", by), DENSITY_COLUMNS, rows)
    hist, scatter = t.out / by_setting("density_hist", ".png", by), t.out / by_setting("density_scatter", ".png", by)
    density_mod.plot_density_histogram(dens, hist, t.title)
    density_mod.plot_density_scatter(dens, ent.entropy_F, scatter, t.title)
    live = ~dens.dead_F
    median = np.median(np.log10(dens.density_tokens_F[live])) if live.any() else float("nan")
    return [f"{t.title}: {int(dens.dead_F.sum())} dead and {int(dens.dense_F.sum())} dense of {t.codes.d_sae} features; "
            f"median log10 token density of the live ones {median:.2f}",
            f"wrote {path}, {hist}, {scatter}"]


def run_token_mse(t: Target) -> list[str]:
    """token_mse.csv and the MSE heat map over the patch grid."""
    lay = t.store.layout(t.codes.hook)
    res = token_mse(t.codes.sums(), t.codes.token_positions, lay)
    rows = ((int(p), role, int(r), int(c), float(m), float(f))
            for p, role, r, c, m, f in zip(res.positions_T, res.roles_T, res.rows_T, res.cols_T, res.mse_T, res.fvu_T))
    path = write_csv(t.out / "token_mse.csv", TOKEN_MSE_COLUMNS, rows)
    png = t.out / "token_mse.png"
    plot_token_mse(res, lay.grid, png, t.title)
    worst = int(np.argmax(res.mse_T))
    worse = " (worse than predicting the mean: FVU > 1)" if res.fvu > 1 else ""
    return [f"{t.title}: MSE {res.mse:.4g}, FVU {res.fvu:.4f}{worse}; worst token {int(res.positions_T[worst])} "
            f"(MSE {res.mse_T[worst]:.4g}), best {int(res.positions_T[np.argmin(res.mse_T)])} (MSE {res.mse_T.min():.4g})",
            f"wrote {path}, {png}"]


def run_monosemanticity(t: Target, embed_hook: str | None, by: str, device: str = "auto") -> list[str]:
    """monosemanticity.csv and its histogram: Pach et al.'s score of every feature over the store's images."""
    from clipsae.analysis.features import monosemanticity as ms_mod

    hook = ms_mod.embedding_hook(t.store, embed_hook)
    res = ms_mod.monosemanticity(t.codes, hook, by, resolve_device(device))
    embed = {"embed": (hook, ms_mod.DEFAULT_EMBED_HOOK)}
    path = write_csv(t.out / by_setting("monosemanticity", ".csv", by, **embed), MONOSEMANTICITY_COLUMNS,
                     zip(range(t.codes.d_sae), res.ms_F.tolist(), res.images_F.tolist()))
    png = ms_mod.plot_monosemanticity(res, t.out / by_setting("monosemanticity", ".png", by, **embed), t.title)
    scored, median = res.scored_F, res.median()
    return [f"{t.title}: monosemanticity by {by} over {hook} embeddings: median {median:.4f} over the "
            f"{int(scored.sum())} features firing on ≥ 2 images ({int((res.images_F == 1).sum())} fire on one, "
            f"{int((res.images_F == 0).sum())} on none); {int((res.ms_F[scored] > res.baseline).sum())} above the "
            f"store's baseline {res.baseline:.4f} (mean cosine of all image pairs)",
            f"wrote {path}, {png}"]


def run_token_mse_series(store: Path, names: list[str], out: Path | None) -> list[str]:
    """token_mse_series.csv and CLIP-Scope's figure: the per-token MSE maps of several codes (a run's
    snapshots, in the order given) on one colour scale. Written beside the first codes by default."""
    s = ActivationStore.open(store)
    codes = [Codes(s, n) for n in names]
    first = codes[0]
    for c in codes[1:]:
        if c.hook != first.hook or not np.array_equal(c.token_positions, first.token_positions):
            raise ClipsaeError(f"codes {c.name!r} ({c.hook}, {c.identity['tokens']} tokens) and {first.name!r} "
                               f"({first.hook}, {first.identity['tokens']} tokens) do not cover the same tokens")
    lay = s.layout(first.hook)
    if lay.grid is None:
        raise ClipsaeError(f"{first.hook} has no patch grid to draw the maps on; run token-mse on one codes at a time")
    results = [token_mse(c.sums(), c.token_positions, lay) for c in codes]
    folder = out_dir(out, store, first.name)
    rows = ((c.name, int(p), role, int(r), int(col), float(m), float(f)) for c, res in zip(codes, results)
            for p, role, r, col, m, f in zip(res.positions_T, res.roles_T, res.rows_T, res.cols_T, res.mse_T, res.fvu_T))
    path = write_csv(folder / "token_mse_series.csv", TOKEN_MSE_SERIES_COLUMNS, rows)
    png = folder / "token_mse_series.png"
    titles = [snapshot_title(c.name, c.identity.get("provenance", {}).get("sae_path")) for c in codes]
    plot_token_mse_series(results, titles, tuple(lay.grid), png,
                          f"per-token reconstruction MSE on {first.hook}, {s.n_images} images")
    lines = [f"{t}: MSE {r.mse:.4g}, FVU {r.fvu:.4f}" for t, r in zip(titles, results)]
    return lines + [f"wrote {path}, {png}"]


def parse_codes_ref(text: str, option: str) -> tuple[Path, str]:
    """``STORE:CODES`` → (store path, codes name); the name follows the last colon."""
    store, sep, name = text.rpartition(":")
    if not sep or not store or not name:
        raise ClipsaeError(f"{option} must be STORE:CODES (a store path, a colon, a codes name), not {text!r}")
    return store_path(store), name


def run_compare(refs: list[tuple[Path, str]], out: Path, by: str, min_hits: int, embed_hook: str | None,
                device: str = "auto") -> list[str]:
    """compare.csv and compare.png: one row per codes (several layers of a store, or several SAEs on a hook)."""
    from clipsae.analysis.evaluation import compare as cmp

    dev = resolve_device(device)
    stores: dict[str, ActivationStore] = {}
    codes = []
    for store, name in refs:
        key = str(absolute(store))
        if key not in stores:
            stores[key] = ActivationStore.open(store)
        codes.append(Codes(stores[key], name))
    rows, merged = cmp.by_seed([cmp.summarise(c, by, min_hits, embed_hook, dev) for c in codes], dev)
    out.mkdir(parents=True, exist_ok=True)
    path = write_csv(out / by_setting("compare", ".csv", by), cmp.COLUMNS, (r.cells() for r in rows))
    png = cmp.plot_compare(rows, out / by_setting("compare", ".png", by))
    md = out / by_setting("compare", ".md", by)
    files.write_text(md, cmp.markdown_table(rows))
    notes = [note for r in rows for note in r.notes] + merged
    page = out / by_setting("compare", ".html", by)
    files.write_text(page, cmp.html_page(rows, png.name, notes))
    return notes + cmp.text_table(rows) + [f"wrote {path}, {md}, {page}, {png}"]


SAE_COMPARE_COLUMNS = ("a", "best_b", "best_cos", "matched_b", "matched_cos")


def _sae_label(sae) -> str:
    """A figure's name for an SAE: the last two parts of its path (the run and the SAE), then what it is."""
    path = Path(sae.identity["path"])
    return f"{path.parent.name}/{path.name} ({sae.architecture}, {sae.d_sae:,} latents)"


def run_sae_compare(path_a: Path, path_b: Path, out: Path, format_a: str | None = None, format_b: str | None = None,
                    device: str = "auto", max_matching: int | None = None, options_a: str | None = None,
                    options_b: str | None = None) -> list[str]:
    """sae_compare.csv, sae_compare.json and the cosine histogram: A's decoder directions matched among B's."""
    from clipsae.analysis.features import dictionary_match as dm
    from clipsae.train.load import load_sae

    dev = resolve_device(device)
    a, b = load_sae(path_a, str(dev), format_a, options_a), load_sae(path_b, str(dev), format_b, options_b)
    lines = []
    hook_a, hook_b = (m.recorded("hook") or m.recorded("hook_name") for m in (a, b))
    if hook_a and hook_b and hook_a != hook_b:
        lines.append(f"warning: A was trained on {hook_a} and B on {hook_b}; their directions are comparable only "
                     f"where the two hooks share a basis")
    if a.d_sae != b.d_sae:
        lines.append(f"note: A has {a.d_sae:,} latents and B {b.d_sae:,}; "
                     + ("some A features stay unmatched one-to-one" if a.d_sae > b.d_sae else "some B features go unused"))
    m = dm.match_dictionaries(a.W_dec, b.W_dec, dev, dm.MAX_MATCHING if max_matching is None else max_matching)
    out.mkdir(parents=True, exist_ok=True)
    path = write_csv(out / "sae_compare.csv", SAE_COMPARE_COLUMNS,
                     zip(range(a.d_sae), m.best_b_A.tolist(), m.best_cos_A.tolist(),
                         [None if j < 0 else j for j in m.matched_b_A.tolist()], m.matched_cos_A.tolist()))
    shares = m.shares()
    summary = write_json(out / "sae_compare.json", {"a": a.identity, "b": b.identity, "matched": m.matched, **shares})
    png = dm.plot_match(m, out / "sae_compare.png", f"A {_sae_label(a)}\nB {_sae_label(b)}")
    lines.append(f"A: {a.architecture} ({a.identity['format']}), {a.d_sae:,} latents; B: {b.architecture} "
                 f"({b.identity['format']}), {b.d_sae:,} latents; mean best-match cosine {m.best_cos_A.mean():.4f}")
    lines.append("A features whose best B match is above " + ", ".join(
        f"{t}: {shares[f'best_above_{t}']:.1%}" for t in dm.THRESHOLDS))
    if m.matched:
        lines.append("one-to-one (Hungarian) matches above " + ", ".join(
            f"{t}: {shares[f'matched_above_{t}']:.1%}" for t in dm.THRESHOLDS))
    else:
        lines.append(f"one-to-one matching left out: more than {dm.MAX_MATCHING if max_matching is None else max_matching:,} "
                     f"latents a side (--max-matching raises the limit; the solve needs the dense cosine matrix)")
    lines += _initial_overlap(path_a, path_b, a, b, m.matched, max_matching)
    return lines + [f"wrote {path}, {summary}, {png}"]


def _initial_overlap(path_a: Path, path_b: Path, a, b, matched: bool, max_matching: int | None) -> list[str]:
    """For two clipsae SAEs, the same one-to-one share for the weights they started from: latents that
    barely trained keep their initial directions, so SAEs drawn from one seed match there without
    having learned anything alike (analyze compare's seed stability counts live latents only)."""
    from clipsae.analysis.evaluation.stability import clipsae_section, initial_decoder_of
    from clipsae.analysis.features import dictionary_match as dm

    sa, sb = clipsae_section(path_a), clipsae_section(path_b)
    if sa is None or sb is None or not matched or a.d_in != b.d_in:
        return []
    m0 = dm.match_dictionaries(initial_decoder_of(sa), initial_decoder_of(sb),
                               max_matching=dm.MAX_MATCHING if max_matching is None else max_matching)
    share = m0.shares()["matched_above_0.7"]
    return [f"their initial weights: one-to-one matches above 0.7: {share:.1%} "
            + ("(drawn from the same seed: the matches above count latents that kept their initial directions too; "
               "`analyze compare` of both SAEs' codes scores live latents only)" if share > 0.5 else
               "(different draws: matches above are learned)")]


def _side_label(a: ActivationStore, ca: Codes, b: ActivationStore, cb: Codes) -> tuple[str, str]:
    """How the printed table names the two sides: models when they differ, else codes names, else A and B."""
    ma, mb = str(a.config.get("model")), str(b.config.get("model"))
    if ma != mb:
        return ma, mb
    return (ca.name, cb.name) if ca.name != cb.name else ("A", "B")


def _side_record(s: ActivationStore, c: Codes) -> dict:
    """What pair.json says of one side, so the report can link to the other side's report."""
    return {"store": str(absolute(s.path)), "codes": c.name, "hook": c.hook, "model": s.config.get("model")}


def _correlate_out(out: Path | None, a: ActivationStore, ca: Codes, b: ActivationStore, cb: Codes) -> Path:
    if out is not None:
        return out_dir(out, a.path, ca.name)
    same = str(absolute(a.path)) == str(absolute(b.path))
    other = cb.name if same else f"{b.path.name}-{cb.name}"
    path = out_dir(None, a.path, ca.name) / f"{CORRELATE_PREFIX}{other}"
    path.mkdir(exist_ok=True)
    return path


def run_correlate(ref_a: tuple[Path, str], ref_b: tuple[Path, str], out: Path | None, k: int, by: str,
                  min_hits: int = DEFAULT_MIN_HITS, shards: Path | None = None, device: str = "auto") -> list[str]:
    """best_matches.csv, matching.csv and the matched pairs' top images, for two codes joined on image key."""
    check_k(k)
    sa, sb = ActivationStore.open(ref_a[0]), ActivationStore.open(ref_b[0])
    ca, cb = Codes(sa, ref_a[1]), Codes(sb, ref_b[1])
    dev = resolve_device(device)
    join = corr_mod.join_on_keys(sa.keys(), sb.keys())
    name_a, name_b = _side_label(sa, ca, sb, cb)
    corr_mod.check_shared(join, f"{ref_a[0]}", f"{ref_b[0]}")
    row_a, row_b = np.full(sa.n_images, -1, np.int64), np.full(sb.n_images, -1, np.int64)
    row_a[join.rows_a] = row_b[join.rows_b] = np.arange(join.n)
    va, vb = corr_mod.shared_values(ca, by, row_a, join.n), corr_mod.shared_values(cb, by, row_b, join.n)
    ma, mb = corr_mod.feature_moments(va), corr_mod.feature_moments(vb)
    for side, m in ((name_a, ma), (name_b, mb)):
        if not m.live_F.any():
            raise ClipsaeError(f"no {side} feature varies over the {join.n} shared images; nothing to correlate")
    live_a, live_b = np.nonzero(ma.live_F)[0], np.nonzero(mb.live_F)[0]
    corr = corr_mod.correlation_matrix(va, vb, ma, mb, dev)
    best = corr_mod.best_matches(corr)
    ra, rb = corr_mod.one_to_one(corr)
    match_corr = corr[torch.from_numpy(ra).to(corr.device), torch.from_numpy(rb).to(corr.device)].cpu().numpy()
    del corr
    pa, pb = live_a[ra], live_b[rb]
    nontrivial = (ma.fired_F[pa] >= min_hits) & (mb.fired_F[pb] >= min_hits)
    shown = [i for i in np.argsort(-match_corr, kind="stable") if nontrivial[i]][:SHOWN_MATCHES]
    n_best = best.b_AR.shape[1]
    best_a, best_b = np.repeat(live_a, n_best), live_b[best.b_AR.ravel()]
    diffs = corr_mod.max_abs_diff(va, vb, np.concatenate([best_a, pa[shown]]), np.concatenate([best_b, pb[shown]]), dev)
    out_path = _correlate_out(out, sa, ca, sb, cb)
    ranks = np.tile(np.arange(1, n_best + 1), len(live_a))
    best_csv = write_csv(out_path / "best_matches.csv", BEST_MATCHES_COLUMNS,
                         zip(best_a.tolist(), ranks.tolist(), best_b.tolist(), best.corr_AR.ravel().tolist(),
                             diffs[:len(best_a)].tolist()))
    top_a, top_b = corr_mod.top_rows(va, k), corr_mod.top_rows(vb, k)
    overlap = corr_mod.topk_overlap(top_a, top_b, pa, pb, k)
    match_csv = write_csv(out_path / "matching.csv", MATCHING_COLUMNS,
                          zip(pa.tolist(), pb.tolist(), match_corr.tolist(), overlap.tolist()))
    lines = [f"{join.n} image keys shared by {ref_a[0]} ({sa.n_images} images) and {ref_b[0]} ({sb.n_images} images)"
             + (f"; repeated keys counted once ({join.duplicate_keys_a} in A, {join.duplicate_keys_b} in B)"
                if join.duplicate_keys_a or join.duplicate_keys_b else ""),
             f"A = {name_a} ({ca.name}, {ca.hook}): {len(live_a)} features vary over them, {ma.n_constant} constant "
             f"(dropped); B = {name_b} ({cb.name}, {cb.hook}): {len(live_b)} vary, {mb.n_constant} constant (dropped)",
             f"one-to-one matching of {len(pa)} pairs by {by} value: mean corr {match_corr.mean():.4f}, "
             f"{int((match_corr > 0.9).sum())} pairs above 0.9, mean top-{k} overlap {overlap.mean():.3f}",
             f"Top-{SHOWN_MATCHES} non-trivial matches (both features fire on ≥ {min_hits} shared images):"]
    pair_diff = diffs[len(best_a):]
    lines += [f"{name_a}-feat {pa[i]} ↔ {name_b}-feat {pb[i]}, corr={match_corr[i]:.4f}, max_diff={d:.2e}"
              for i, d in zip(shown, pair_diff)] or ["(none)"]
    pair = write_json(out_path / CORRELATE_PAIR, {"a": _side_record(sa, ca), "b": _side_record(sb, cb), "by": by})
    written = [str(best_csv), str(match_csv), str(pair)]
    if shown:
        written.append(_pairs_figure(sa, sb, join, shown[:PAIRS_IN_FIGURE], pa, pb, match_corr, top_a, top_b,
                                     name_a, name_b, shards, out_path / "matched_pairs.png", lines))
    if not any(w.endswith("matched_pairs.png") for w in written):
        remove_stale(out_path / "matched_pairs.png")
    return lines + [f"wrote {', '.join(w for w in written if w)}"]


def _pairs_figure(sa, sb, join, shown, pa, pb, match_corr, top_a, top_b, name_a, name_b, shards, path, lines) -> str:
    """The matched pairs' top images side by side; when the tars cannot be read, say why and go on."""
    from clipsae.analysis.images import load_images
    from clipsae.analysis.pair_figure import plot_pairs

    imgs_a = {i: join.rows_a[top_a[pa[i]][:IMAGES_PER_SIDE]] for i in shown}
    imgs_b = {i: join.rows_b[top_b[pb[i]][:IMAGES_PER_SIDE]] for i in shown}
    try:
        loaded_a = load_images(sa, np.concatenate(list(imgs_a.values())), shards)
        loaded_b = load_images(sb, np.concatenate(list(imgs_b.values())), shards)
    except ClipsaeError as exc:
        lines.append(f"matched_pairs.png not drawn: {exc}")
        return ""
    rows = [(f"{name_a} {pa[i]} ↔ {name_b} {pb[i]}  r={match_corr[i]:.3f}",
             [loaded_a[j] for j in imgs_a[i]], [loaded_b[j] for j in imgs_b[i]]) for i in shown]
    return str(plot_pairs(rows, IMAGES_PER_SIDE, path, f"top images: {name_a} (left) and {name_b} (right)"))


def run_neuron_alignment(t: Target, sae: Path | None = None, model: str | None = None, pretrained: str | None = None,
                         seed: int = 0) -> list[str]:
    """neuron_alignment.csv and its histogram: each encoder direction's best |cosine| with an MLP neuron."""
    from clipsae.analysis.codes_sae import codes_sae
    from clipsae.analysis.model import neuron_alignment as na
    from clipsae.pipeline.model import load_model, store_model_config

    block = na.block_of(t.codes.hook)
    model_sae = codes_sae(t.codes, sae)
    cfg = store_model_config(t.store.config, t.store.provenance, pretrained, model)
    loaded = load_model(cfg)
    neurons = na.mlp_out_directions(loaded.visual, block)
    if neurons.shape[1] != model_sae.d_in:
        raise ClipsaeError(f"{cfg.name}'s {t.codes.hook} is {neurons.shape[1]}-wide; the SAE reads {model_sae.d_in}")
    al = na.neuron_alignment(model_sae.W_enc, neurons, seed)
    above = al.above_random_F()
    path = write_csv(t.out / NEURON_ALIGNMENT_FILE, NEURON_ALIGNMENT_COLUMNS,
                     zip(range(len(above)), al.max_cos_F.tolist(), al.neuron_F.tolist(), above.astype(int).tolist()))
    png = na.plot_alignment(al, t.out / "neuron_alignment.png", f"{t.title}; {neurons.shape[0]} MLP neurons")
    lines = [f"{t.title}: encoder directions against the {neurons.shape[0]} MLP output directions of "
             f"{cfg.name} ({loaded.identity['pretrained']}) block {block}",
             f"median max |cos| {np.median(al.max_cos_F):.3f} (random directions {np.median(al.random_R):.3f}); "
             f"{int(above.sum())} of {len(above)} features above the random {na.BASELINE_QUANTILE:.0%} quantile "
             f"({al.threshold:.3f})"]
    if loaded.identity["pretrained"] != t.store.config.get("pretrained"):
        lines.append(f"note: these weights ({loaded.identity['pretrained']}) are not the ones the store was "
                     f"extracted with ({t.store.config.get('pretrained')})")
    return lines + [f"wrote {path}, {png}"]


UNIVERSAL_DIR = "universal"
UNIVERSAL_TOP_FILE = "universal_top.csv"  # each live latent's top images in each model, by key
UNIVERSAL_LINK = "universal_link.json"  # beside each model's codes: where their universal analysis is


def run_universal(refs: list[tuple[Path, str]], out: Path | None, by: str = "max", device: str = "auto",
                  shards: Path | None = None, min_hits: int = DEFAULT_MIN_HITS) -> list[str]:
    """universal.csv, universal.json, universal.png and universal_top_images.png: each latent of a universal SAE
    across its models, from the codes each model's SAE made on its store (analysis/features/universal.py)."""
    from clipsae.analysis.codes_sae import codes_sae
    from clipsae.analysis.features import universal as uni
    from clipsae.train.metrics import cross_fvu

    if len(refs) < 2:
        raise ClipsaeError("--codes needs two or more STORE:CODES, one per model of the universal SAE")
    stores = [ActivationStore.open(p) for p, _ in refs]
    codes = [Codes(st, name) for st, (_, name) in zip(stores, refs)]
    dev = resolve_device(device)
    saes = [codes_sae(c, device=str(dev)) for c in codes]
    places = []
    for c, sae in zip(codes, saes):
        where = sae.recorded("universal")
        if not isinstance(where, dict):
            raise ClipsaeError(f"codes {c.name!r} were not made by a universal SAE's models/<m> (train --universal)")
        places.append((Path(sae.identity["path"]).parent.parent, int(where["model"]), int(where["of"])))
    runs = {str(absolute(p)) for p, _, _ in places}
    if len(runs) > 1:
        raise ClipsaeError(f"the codes come from {len(runs)} different universal runs ({', '.join(sorted(runs))}); give "
                           f"the codes of one run's models")
    index = [m for _, m, _ in places]
    if len(set(index)) < len(index):
        raise ClipsaeError(f"two of the codes were made by the same model of the run (models/{index}); give one per model")
    lead_keys = stores[0].keys()
    positions = [st.positions_of(lead_keys) for st in stores]
    shared = np.all([p >= 0 for p in positions], axis=0)
    images = [p[shared] for p in positions]  # per store, the shared images in the first store's order
    keys = lead_keys[shared]
    if len(keys) < 2:
        raise ClipsaeError(f"the stores share {len(keys)} image keys; the codes must be of the same images")
    n, d_sae = len(keys), saes[0].d_sae
    fires, tops = [], []
    for st, c, imgs in zip(stores, codes, images):
        row = np.full(st.n_images, -1, dtype=np.int64)
        row[imgs] = np.arange(n)
        v = corr_mod.shared_values(c, by, row, n)
        fires.append(uni.fires_matrix(v.indptr, v.latents, v.values, d_sae))
        tops.append(corr_mod.top_rows(v, IMAGES_PER_SIDE))
    scaled = [sae.W_dec.detach().cpu() * float(sae.recorded("scale") or 1.0) for sae in saes]
    table = uni.universal_table(fires, uni.energy_shares(scaled))
    picked = np.linspace(0, n - 1, min(n, uni.FVU_IMAGES)).astype(np.int64)
    blocks = []
    for st, c, imgs in zip(stores, codes, images):
        acts = st.read(c.hook, imgs[picked])[:, c.token_positions]
        blocks.append(torch.from_numpy(acts.reshape(-1, acts.shape[-1])).float().to(dev))
    cross = cross_fvu(saes, blocks)
    path = out_dir(out, stores[0].path, codes[0].name)
    if out is None:
        path = path / UNIVERSAL_DIR
        path.mkdir(exist_ok=True)
    M = len(saes)
    names = [f"m{m}" for m in index]
    pairs = [(a, b) for a in range(M) for b in range(M) if a != b]
    columns = (("latent", "universality", "live") + tuple(f"fire_rate_{x}" for x in names)
               + tuple(f"energy_{x}" for x in names) + tuple(f"cofire_{names[a]}_{names[b]}" for a, b in pairs))
    rows = ([i, float(table.universality_N[i]), int(table.live_N[i]), *table.fire_rate_MN[:, i].tolist(),
             *table.energy_MN[:, i].tolist(), *[float(table.cofire_MMN[a, b, i]) for a, b in pairs]] for i in range(d_sae))
    csv_path = write_csv(path / "universal.csv", columns, rows)
    live = table.live_N
    shared = live & (table.universality_N >= uni.UNIVERSAL_ABOVE)
    summary = {"images": n, "by": by, "latents": d_sae, "live": int(live.sum()), "universal_latents": int(shared.sum()),
               "universal_above": uni.UNIVERSAL_ABOVE, "run": sorted(runs)[0],
               "models": [{"model": m, "store": str(st.path), "codes": c.name, "hook": c.hook}
                          for m, st, c in zip(index, stores, codes)],
               "cross_fvu": cross.tolist(), "cross_fvu_images": len(picked),
               "mean_universality_live": float(table.universality_N[live].mean()) if live.any() else None}
    json_path = write_json(path / "universal.json", summary)
    top_rows_ = ((int(f), index[m], r + 1, keys[row]) for f in np.nonzero(live)[0] for m in range(M)
                 for r, row in enumerate(tops[m][f]))
    write_csv(path / UNIVERSAL_TOP_FILE, ("latent", "model", "rank", "key"), top_rows_)
    for m, (st, c) in enumerate(zip(stores, codes)):
        # Where each model's report finds this analysis (analysis/report/siblings.py).
        write_json(out_dir(None, st.path, c.name) / UNIVERSAL_LINK, {"folder": str(absolute(path)), "model": index[m]})
    png = uni.plot_universal(table, [f"model {m} ({c.hook})" for m, c in zip(index, codes)], path / "universal.png",
                             f"{sorted(runs)[0]}: {int(live.sum())} live latents over {n} shared images")
    matrix = "; ".join(f"{names[a]}→{names[b]} {cross[a, b]:.3f}" for a in range(M) for b in range(M))
    lines = []
    counts = np.stack([np.asarray(f.sum(0)).ravel() for f in fires])
    hits = live & (counts.min(0) >= min_hits)
    shown = [int(i) for i in np.argsort(-np.where(hits, table.universality_N, -1), kind="stable")[:UNIVERSAL_SHOWN]
             if hits[i]]
    figure = _universal_figure(stores, codes, images, tops, shown, table, index, shards, path, lines) if shown else ""
    if not figure:
        remove_stale(path / "universal_top_images.png")
    return lines + [f"{n} images shared by the {M} stores; {int(live.sum())} of {d_sae} latents live, {int(shared.sum())} "
            f"universal (universality ≥ {uni.UNIVERSAL_ABOVE})",
            f"cross-model reconstruction FVU (codes of a through b's decoder) over {len(picked)} images: {matrix}",
            f"wrote {csv_path}, {json_path}, {png}" + (f", {figure}" if figure else "")]


UNIVERSAL_SHOWN = 6


def _universal_figure(stores, codes, images, tops, shown, table, index, shards, path, lines) -> str:
    """The most universal latents' top images in model 0 (left) beside each other model's (right), one row per
    latent and other model; when the tars cannot be read, say why and go on."""
    from clipsae.analysis.images import load_images
    from clipsae.analysis.pair_figure import plot_pairs

    rows = []
    try:
        loaded = []
        for st, top, shared in zip(stores, tops, images):
            imgs = {f: shared[top[f]] for f in shown}
            got = load_images(st, np.concatenate(list(imgs.values())), shards)
            loaded.append({f: [got[int(i)] for i in imgs[f]] for f in shown})
    except ClipsaeError as exc:
        lines.append(f"universal_top_images.png not drawn: {exc}")
        return ""
    for f in shown:
        for m in range(1, len(stores)):
            rows.append((f"latent {f}  universality {table.universality_N[f]:.2f}: model {index[0]} ({codes[0].hook}) ↔ "
                         f"model {index[m]} ({codes[m].hook})", loaded[0][f], loaded[m][f]))
    return str(plot_pairs(rows, IMAGES_PER_SIDE, path / "universal_top_images.png",
                          "the most universal latents' top images in each model"))
