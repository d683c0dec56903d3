"""``clipsae analyze report``: gather the statistics, draw the thumbnails, write the site."""

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipsae.analysis.class_names import class_names
from clipsae.analysis.codes_sae import codes_sae
from clipsae.analysis.features import density as density_mod
from clipsae.analysis.features.fit import fit as store_fit
from clipsae.analysis.features.interval_samples import IntervalSamples, interval_samples
from clipsae.analysis.features.label_entropy import DEFAULT_MIN_HITS, label_entropy
from clipsae.analysis.features.monosemanticity import Monosemanticity, embedding_hook, monosemanticity
from clipsae.analysis.features.nearest_features import nearest_features
from clipsae.analysis.features.patch_maps import patch_maps
from clipsae.analysis.features.top_images import TopImages, check_k, top_images
from clipsae.analysis.output import out_dir
from clipsae.analysis.random_weights import WARNING as RANDOM_WEIGHTS_WARNING
from clipsae.analysis.random_weights import store_has_random_weights as random_weights
from clipsae.analysis.report import siblings, site
from clipsae.analysis.report.content import ClassMaps, FeatureContent, PatchMaps
from clipsae.analysis.report.thumbnails import write_thumbnails
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes, PartSums
from clipsae.store.location import absolute
from clipsae.store.reader import ActivationStore
from clipsae.train.load import load_metrics

ENTROPY_TOP = 20  # Fry's label entropy and mean top activation use each feature's top 20 images


@dataclass(frozen=True)
class ReportConfig:
    """What ``analyze report`` reads and how much it shows; validated by :meth:`check`."""

    store: Path
    codes: str
    out: Path | None = None
    k: int = 12
    per_interval: int = 4
    n_intervals: int = 4
    nearest: int = 8
    by: str = "max"
    min_hits: int = DEFAULT_MIN_HITS
    thumb_size: int = 160
    sae: Path | None = None
    shards: Path | None = None
    classes: Path | None = None
    embed_hook: str | None = None
    progress: bool = True

    def check(self) -> None:
        check_k(self.k)
        for name in ("per_interval", "n_intervals", "nearest"):
            if getattr(self, name) < 0 or (name == "n_intervals" and self.n_intervals < 1):
                raise ClipsaeError(f"--{name.replace('_', '-')} must be at least {int(name == 'n_intervals')}, "
                                   f"not {getattr(self, name)}")
        if not 16 <= self.thumb_size <= 1024:
            raise ClipsaeError(f"--thumb-size must be between 16 and 1024 pixels, not {self.thumb_size}")


def _prepare_out(out: Path) -> Path:
    """A fresh '<out>.partial' to write into; refuses an ``out`` that holds something other than a report."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / site.MARKER).is_file())):
        raise ClipsaeError(f"{out} exists and is not a clipsae report; choose another --out")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def _summary(store: ActivationStore, codes: Codes, sums: PartSums, dens, sae_note: str, sae_path: Path | None,
             splice: dict | None, ms: Monosemanticity | None) -> list[list[str]]:
    sae = codes.identity["sae"]
    rows = [["model", f"{store.config.get('model')} ({store.config.get('pretrained') or 'random weights'})"],
            *([["warning", RANDOM_WEIGHTS_WARNING]] if random_weights(store) else []),
            ["hook", codes.hook],
            ["tokens", f"{codes.identity['tokens']} ({codes.n_positions} per image)"],
            ["images", f"{store.n_images:,}"],
            ["SAE", f"{sae.get('architecture')}, {sae['d_sae']:,} latents" + (f", k={sae['k']}" if sae.get("k") else "")
             + (f" — {sae_path}" if sae_path else "")]]
    metrics = load_metrics(sae_path) if sae_path else None
    if metrics and "fvu" in metrics:
        rows.append(["held-out (training)", f"FVU {metrics['fvu']:.4f}, explained variance {metrics['explained_variance']:.4f}, "
                     f"L0 {metrics['l0']:.1f}, dead {metrics['dead_heldout']}, dense {metrics['dense']}"])
    else:
        rows.append(["held-out (training)", "no held-out metrics beside the SAE" if sae_path else sae_note])
    fit = store_fit(sums, codes.n_positions)
    rows.append(["on this store", f"FVU {fit.fvu:.4f}, explained variance {1 - fit.fvu:.4f}, L0 {fit.l0:.1f}, "
                 f"dead {int(dens.dead_F.sum()):,}, dense {int(dens.dense_F.sum()):,} (> 10% of tokens)"])
    if ms is not None:
        n_scored, median = int(ms.scored_F.sum()), ms.median()
        median = f"{median:.4f}" if n_scored else "–"
        rows.append(["monosemanticity", f"median {median} over {n_scored:,} features firing on ≥ 2 images, "
                     f"embedded by {ms.embed_hook}; all image pairs {ms.baseline:.4f}"])
    if splice is not None:
        rows.append(["spliced", splice["summary"]])
    return rows


def _monosemanticity(cfg: ReportConfig, store: ActivationStore, codes: Codes, lines: list[str]) -> Monosemanticity | None:
    """The scores where the store has image embeddings; without them the report goes on and says so,
    unless --embed-hook asked for a hook it cannot use."""
    try:
        hook = embedding_hook(store, cfg.embed_hook)
    except ClipsaeError as exc:
        if cfg.embed_hook is not None:
            raise
        lines.append(f"monosemanticity left out: {exc}")
        return None
    return monosemanticity(codes, hook, cfg.by)


def _class_maps(store: ActivationStore, codes: Codes) -> ClassMaps | None:
    """The store's patch labels at the codes' hook, to draw a class over a feature's top image; None without."""
    if store.mask_classes() is None:
        return None
    return ClassMaps(store.patch_labels(codes.hook)[0], {name: i for i, name in store.mask_classes().items()})


def _universal_images(store: ActivationStore, universal, live: np.ndarray) -> dict[str, int]:
    """The images, by key, that the live latents' universal sections show from the other models (those of this
    store: the models' stores hold the same images)."""
    if universal is None:
        return {}
    keys = sorted({k for f in live.tolist() for m, ks in universal.top_keys.get(f, {}).items() if m != universal.model
                   for k in ks})
    return {k: int(i) for k, i in zip(keys, store.positions_of(keys)) if i >= 0}


def _shown_pairs(top: TopImages, samples: IntervalSamples, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(feature, image) of every image the live features' pages show: top images and interval samples."""
    imgs = np.concatenate([top.images_FK[live], samples.images_FQS[live].reshape(len(live), -1)], axis=1)
    feats = np.broadcast_to(live[:, None], imgs.shape)
    keep = imgs >= 0
    return feats[keep].astype(np.int64), imgs[keep].astype(np.int64)


def run_report(cfg: ReportConfig) -> list[str]:
    """Write the report of codes ``cfg.codes`` and return the lines to print."""
    cfg.check()
    store = ActivationStore.open(cfg.store)
    codes = Codes(store, cfg.codes)
    analysis = out_dir(None, cfg.store, cfg.codes)
    out = Path(cfg.out) if cfg.out is not None else siblings.report_dir(cfg.store, cfg.codes)
    partial = _prepare_out(out)
    try:
        return _write(cfg, store, codes, analysis, out, partial)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _write(cfg: ReportConfig, store: ActivationStore, codes: Codes, analysis: Path, out: Path, partial: Path) -> list[str]:
    lines = []
    sums = codes.sums()
    top_all = top_images(codes, max(cfg.k, ENTROPY_TOP), cfg.by)
    top, top20 = top_all.first(cfg.k), top_all.first(ENTROPY_TOP)
    dens = density_mod.density(sums, codes.n_positions, top20)
    ent = label_entropy(top20, store.labels(), cfg.min_hits)
    samples = interval_samples(codes, top, cfg.per_interval, cfg.by, cfg.n_intervals)
    ms = _monosemanticity(cfg, store, codes, lines)
    nearest, sae_path, sae_note = None, None, ""
    try:
        sae = codes_sae(codes, cfg.sae)
        sae_path = Path(sae.identity["path"])
        if cfg.nearest:
            nearest = nearest_features(sae.W_dec, cfg.nearest)
    except ClipsaeError as exc:
        if cfg.sae is not None:
            raise
        sae_note = f"SAE not found ({exc})"
        lines.append(f"nearest features by decoder cosine left out: {exc}")

    live = np.nonzero(~dens.dead_F)[0]
    feat_P, img_P = _shown_pairs(top, samples, live)
    layout = store.layout(codes.hook)
    grid = tuple(layout.grid) if layout.grid is not None and codes.n_positions > 1 else None
    maps = patch_maps(codes, feat_P, img_P, top.values_FK[feat_P, 0]) if grid else np.zeros((len(feat_P), 0), np.uint8)
    universal = siblings.universal_latents(analysis)
    universal_images = _universal_images(store, universal, live)
    n_thumbs = write_thumbnails(store, np.concatenate([img_P, list(universal_images.values())]).astype(np.int64),
                                partial / "images", cfg.thumb_size, cfg.shards, cfg.progress)

    matchings = siblings.matchings(analysis)
    segments = siblings.segmented_classes(analysis)
    content = FeatureContent(top, samples, dens, ent, top20, store.labels(), store.keys(),
                             class_names(store, cfg.classes, cfg.shards), nearest, siblings.feature_names(analysis),
                             matchings, PatchMaps(grid, feat_P, img_P, maps), None if ms is None else ms.ms_F,
                             siblings.probed_attributes(analysis), random_weights=random_weights(store),
                             segments=segments, class_maps=_class_maps(store, codes) if segments and grid else None,
                             universal=universal, universal_images=universal_images)
    folder = partial / "features"
    folder.mkdir()
    match_folders = [siblings.relative_link(m.other_report / "features", out / "features") for m in matchings]
    for j, f in enumerate(tqdm(live, desc="feature pages", unit="page", disable=not cfg.progress)):
        links = {"index": "../index.html", "prev": f"{live[j - 1]}.html" if j else None,
                 "next": f"{live[j + 1]}.html" if j + 1 < len(live) else None, "match_folders": match_folders}
        site.write_feature(folder, content.record(int(f), links))

    splice = siblings.splice_result(analysis)
    title = f"{store.config.get('model')} {codes.hook}: {codes.name}"
    index = {"title": title, "summary": _summary(store, codes, sums, dens, sae_note, sae_path, splice, ms),
             "n_features": codes.d_sae, "n_live": len(live), "table": content.table(),
             "correlations": [{"other": m.label, "href": siblings.relative_link(m.other_report / "index.html", out),
                               "pairs": len(m.b_of_a)} for m in matchings]}
    site.write_index(partial, index)
    site.copy_assets(partial)
    site.write_json_marker(partial, {"store": str(absolute(store.path)), "codes": codes.name, "features": len(live),
                                     "images": n_thumbs, "k": cfg.k, "by": cfg.by})
    site.replace_report(partial, out)
    return lines + [f"{title}: {len(live):,} live features of {codes.d_sae:,} ({codes.d_sae - len(live):,} never fired), "
                    f"{n_thumbs:,} thumbnails",
                    f"wrote {out / 'index.html'}  (open it in a browser; no server needed)"]
