"""The ``clipsae analyze`` commands as functions: open the codes, compute, write CSV and PNG, summarise.

Each returns the lines it would print; the CLI only parses options and prints them.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsae.analysis import density as density_mod
from clipsae.analysis.label_entropy import DEFAULT_MIN_HITS, label_entropy
from clipsae.analysis.output import out_dir, write_csv
from clipsae.analysis.token_mse import plot_token_mse, token_mse
from clipsae.analysis.top_images import check_k, top_images
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore

TOP_IMAGES_COLUMNS = ("feature", "rank", "image", "key", "label", "value", "token")
LABEL_ENTROPY_COLUMNS = ("feature", "entropy", "entropy_norm", "n", "top_label", "top_label_share")
DENSITY_COLUMNS = ("feature", "tokens_fired", "images_fired", "density_tokens", "density_images", "mean_top20",
                   "dead", "dense")
TOKEN_MSE_COLUMNS = ("token", "row", "col", "mse", "fvu")


@dataclass(frozen=True)
class Target:
    """The codes an analysis reads, and where it writes."""

    store: ActivationStore
    codes: Codes
    out: Path

    @classmethod
    def open(cls, store: Path, codes: str, out: Path | None) -> "Target":
        s = ActivationStore.open(store)
        c = Codes(s, codes)
        return cls(s, c, out_dir(out, store, codes))

    @property
    def title(self) -> str:
        return f"{self.codes.name} on {self.codes.hook} ({self.codes.identity['tokens']} tokens, {self.store.n_images} images)"


def run_top_images(t: Target, k: int, by: str) -> list[str]:
    """top_images.csv: each feature's k best images by value, ties to the smaller image index."""
    top = top_images(t.codes, k, by)
    keys, labels = t.store.keys(), t.store.labels()
    f_idx, r_idx = np.nonzero(top.images_FK >= 0)
    rows = ((int(f), int(r) + 1, int(img), keys[img], int(labels[img]), float(top.values_FK[f, r]), int(top.tokens_FK[f, r]))
            for f, r in zip(f_idx, r_idx) for img in [top.images_FK[f, r]])
    path = write_csv(t.out / "top_images.csv", TOP_IMAGES_COLUMNS, rows)
    filled = top.filled_F()
    return [f"{t.title}: top {k} images by {by} for {int((filled > 0).sum())} of {t.codes.d_sae} features "
            f"({int((filled == 0).sum())} never fired)", f"wrote {path}"]


def run_label_entropy(t: Target, k: int, by: str, min_hits: int = DEFAULT_MIN_HITS) -> list[str]:
    """label_entropy.csv: Fry's entropy of the labels of each feature's top-k images."""
    check_k(k)
    ent = label_entropy(top_images(t.codes, k, by), t.store.labels(), min_hits)
    rows = ((f, ent.entropy_F[f], ent.entropy_norm_F[f], int(ent.n_F[f]),
             int(ent.top_label_F[f]) if ent.n_F[f] else None, ent.top_label_share_F[f]) for f in range(t.codes.d_sae))
    path = write_csv(t.out / "label_entropy.csv", LABEL_ENTROPY_COLUMNS, rows)
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
    path = write_csv(t.out / "density.csv", DENSITY_COLUMNS, rows)
    hist, scatter = t.out / "density_hist.png", t.out / "density_scatter.png"
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
    rows = ((int(p), int(r), int(c), float(m), float(f))
            for p, r, c, m, f in zip(res.positions_T, res.rows_T, res.cols_T, res.mse_T, res.fvu_T))
    path = write_csv(t.out / "token_mse.csv", TOKEN_MSE_COLUMNS, rows)
    png = t.out / "token_mse.png"
    plot_token_mse(res, lay.grid, png, t.title)
    worst = int(np.argmax(res.mse_T))
    return [f"{t.title}: MSE {res.mse:.4g}, FVU {res.fvu:.4f}; worst token {int(res.positions_T[worst])} "
            f"(MSE {res.mse_T[worst]:.4g}), best {int(res.positions_T[np.argmin(res.mse_T)])} (MSE {res.mse_T.min():.4g})",
            f"wrote {path}, {png}"]
