"""Concept search over cached codes (MSAE's concept-based similarity search): rank the store's images
by how well their features match a query, in one streaming pass.

Two scores, over the per-image values v(image) (``--by``: max, cls or mean over the image's tokens):
- weighted features: score = Σ_i w_i·v_i(image);
- a query vector q over the latents (an image's own per-image values, possibly edited):
  score = q·v / (‖q‖·‖v‖), the cosine over the SAE's latents (0 for an image with no active latent).
A hit's contributions are the terms of that sum: w_i·v_i, or q_i·v_i / (‖q‖·‖v‖). Only images on
which at least one query feature is active are ranked.
Memory: the query (one float64 per latent), one block of entries and the k best images.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from clipsae.analysis.features.top_images import check_k
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes


@dataclass(frozen=True)
class Query:
    """``q_F``: the weights (``cosine`` False) or the query vector (``cosine`` True), dense over the latents;
    ``exclude``: images never returned (the query's own)."""

    q_F: np.ndarray
    cosine: bool
    exclude: frozenset = frozenset()

    def __post_init__(self):
        if not np.any(self.q_F):
            raise ClipsaeError("the query has no active feature: nothing to search for"
                               + (" (did --edit remove them all?)" if self.cosine else ""))


@dataclass
class Hits:
    """The k best images, best first (ties to the smaller image), and each one's contributions:
    (features, terms) sorted by term, largest first."""

    images_K: np.ndarray
    scores_K: np.ndarray
    contributions: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def search(codes: Codes, query: Query, k: int, by: str = "max") -> Hits:
    """The ``k`` images of largest score (see the module's formulas), exactly, in one pass over the codes."""
    check_k(k)
    q = query.q_F.astype(np.float64)
    q_norm = float(np.linalg.norm(q))
    exclude = np.array(sorted(query.exclude), dtype=np.int64)
    best_img = np.empty(0, np.int64)
    best_score = np.empty(0, np.float64)
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for block in codes.iter_images(by):
        n = len(block.images_I)
        local = np.repeat(np.arange(n), np.diff(block.offsets))
        v = block.values_E.astype(np.float64)
        term = q[block.latents_E] * v
        score = np.bincount(local, term, minlength=n)
        if query.cosine:
            norm = np.sqrt(np.bincount(local, v * v, minlength=n)) * q_norm
            scale = np.divide(1.0, norm, out=np.zeros(n), where=norm > 0)
            score *= scale
            term = term * scale[local]
        # Only images on which some query feature is active: the others have no match to rank.
        allowed = (np.bincount(local, term != 0, minlength=n) > 0) & ~np.isin(block.images_I, exclude)
        images, score = block.images_I[allowed], score[allowed]
        cand_img, cand_score = np.concatenate([best_img, images]), np.concatenate([best_score, score])
        order = np.lexsort((cand_img, -cand_score))[:k]
        best_img, best_score = cand_img[order], cand_score[order]
        new = set(best_img.tolist()) - set(kept)
        for img in new:
            j = int(img - block.images_I[0])
            lo, hi = block.offsets[j], block.offsets[j + 1]
            feats, terms = block.latents_E[lo:hi], term[lo:hi]
            nz = terms != 0
            by_term = np.lexsort((feats[nz], -terms[nz]))
            kept[img] = (feats[nz][by_term], terms[nz][by_term])
        kept = {img: kept[img] for img in best_img.tolist()}
    return Hits(best_img, best_score, [kept[int(i)] for i in best_img])


def dense(latents, values, d_sae: int) -> np.ndarray:
    """The (d_sae,) float64 vector with ``values`` at ``latents`` (repeated latents add up), 0 elsewhere."""
    q = np.zeros(d_sae)
    np.add.at(q, np.asarray(latents, dtype=np.int64), np.asarray(values, dtype=np.float64))
    return q


def weights_query(weights: dict[int, float], d_sae: int) -> Query:
    """A weighted-features query: ``{feature: weight}``."""
    return Query(dense(list(weights), list(weights.values()), d_sae), cosine=False)


def vector_query(latents: np.ndarray, values: np.ndarray, d_sae: int, exclude=()) -> Query:
    """A cosine query from one image's per-image values (latents, values)."""
    return Query(dense(latents, values, d_sae), cosine=True, exclude=frozenset(int(i) for i in exclude))


SEARCH_COLUMNS = ("rank", "image", "key", "label", "score")
FEATURES_COLUMNS = ("rank", "feature", "contribution")
SHOWN_CONTRIBUTIONS = 10  # per hit in search_features.csv
FIGURE_HITS = 12


@dataclass(frozen=True)
class SearchRequest:
    """One search as the command was asked: exactly one of ``features``, ``key``, ``images`` or ``text``."""

    features: str | None = None
    key: str | None = None
    images: tuple = ()
    text: str | None = None
    text_features: int = 8
    edit: str | None = None

    def __post_init__(self):
        given = [name for name, v in (("--features", self.features), ("--key", self.key), ("--image", self.images),
                                      ("--text", self.text)) if v]
        if len(given) != 1:
            raise ClipsaeError("give one query: --features, --key, --image or --text"
                               + (f" (not {' and '.join(given)})" if given else ""))
        if self.edit and not (self.key or self.images):
            raise ClipsaeError("--edit changes a query image's features; use it with --key or --image")
        if self.text_features < 1:
            raise ClipsaeError(f"--text-features must be at least 1, not {self.text_features}")


def build_query(t, req: SearchRequest, by: str, choice) -> tuple[Query, list[str], object]:
    """The query, lines saying what it is, and what the figure shows beside the hits (an image or a text)."""
    from clipsae.analysis.edits import apply_edits, codes_are_signed, parse_edits, parse_weighted
    from clipsae.analysis.model import query as model_query

    codes, lines = t.codes, []
    if req.features:
        weights = parse_weighted(req.features, codes.d_sae)
        return weights_query(weights, codes.d_sae), [f"query: features {req.features} by {by}"], f"features\n{req.features}"
    if req.text:
        # Only live features: one that never fired on the store finds no image, whatever its direction.
        scores = np.where(codes.sums().latent_images_fired > 0, model_query.text_feature_scores(codes, req.text, choice),
                          -np.inf)
        top = [int(f) for f in np.argsort(-scores, kind="stable")[:req.text_features] if scores[f] > 0]
        if not top:
            raise ClipsaeError(f"no feature that fires on the store has a decoder direction with a positive cosine "
                               f"with {req.text!r}")
        lines.append(f"query: {req.text!r} → features " + ", ".join(f"{f} ({scores[f]:.3f})" for f in top)
                     + " (features that fired on the store)")
        note = model_query.model_has_random_weights_note(codes)
        return weights_query({f: float(scores[f]) for f in top}, codes.d_sae), lines + ([note] if note else []), req.text
    if req.key:
        image = int(t.store.images_of([req.key])[0])
        latents, values = codes.image_values(image, by)
        q = dense(latents, values, codes.d_sae)
        exclude, shown = [image], [image]
        lines.append(f"query: image {image} (key {req.key}), {len(latents)} active features by {by}")
    else:
        pictures = [model_query.read_image(p) for p in req.images]
        q = model_query.image_vectors(codes, pictures, by, choice).mean(0)
        stems = {p.stem for p in req.images}
        exclude = [i for i, k in enumerate(t.store.keys()) if str(k) in stems]
        shown = pictures
        lines.append(f"query: {len(pictures)} image file(s), mean of their per-image values by {by}, "
                     f"{int(np.count_nonzero(q))} active features")
    if req.edit:
        edits = parse_edits(req.edit, codes.d_sae, signed=codes_are_signed(codes))
        q = apply_edits(torch.from_numpy(q), edits).numpy()
        lines.append("edited: " + ", ".join(e.text() for e in edits))
    return Query(q, cosine=True, exclude=frozenset(exclude)), lines, shown


def run_search(t, req: SearchRequest, k: int, by: str, choice, shards=None) -> list[str]:
    """search.csv, search_features.csv and search.png: the k images that best match the query."""
    from clipsae.analysis.output import remove_stale, write_csv

    query, lines, shown = build_query(t, req, by, choice)
    hits = search(t.codes, query, k, by)
    keys, labels = t.store.keys(), t.store.labels()
    path = write_csv(t.out / "search.csv", SEARCH_COLUMNS,
                     ((r + 1, int(i), keys[i], int(labels[i]), float(s))
                      for r, (i, s) in enumerate(zip(hits.images_K, hits.scores_K))))
    feats = write_csv(t.out / "search_features.csv", FEATURES_COLUMNS,
                      ((r + 1, int(f), float(c)) for r, (fs, cs) in enumerate(hits.contributions)
                       for f, c in zip(fs[:SHOWN_CONTRIBUTIONS], cs[:SHOWN_CONTRIBUTIONS])))
    score = "cosine over the latents" if query.cosine else "Σ weight × value"
    lines.append(f"{t.title}: {len(hits.images_K)} images by {score}" + (
        f"; best {keys[hits.images_K[0]]} ({hits.scores_K[0]:.4g})" if len(hits.images_K) else
        "; no image has any of the query's features"))
    written = [str(path), str(feats)]
    figure = _figure(t, hits, shown, shards, t.out / "search.png", lines) if len(hits.images_K) else ""
    if figure:
        written.append(figure)
    else:
        remove_stale(t.out / "search.png")
    return lines + [f"wrote {', '.join(written)}"]


def _figure(t, hits: Hits, shown, shards, path, lines) -> str:
    """The query (its images, or its text) above the top hits, titled with what the query was (edits
    included); where the tars cannot be read, say why."""
    from PIL import Image as PILImage

    from clipsae.analysis.images import load_images
    from clipsae.analysis.output import pyplot
    from clipsae.analysis.random_weights import WARNING, store_has_random_weights

    top = hits.images_K[:FIGURE_HITS]
    queries = shown if isinstance(shown, list) else [shown]
    wanted = list(top) + [q for q in queries if isinstance(q, (int, np.integer))]
    try:
        loaded = load_images(t.store, wanted, shards)
    except ClipsaeError as exc:
        lines.append(f"search.png not drawn: {exc}")
        return ""
    plt = pyplot()
    cols = min(max(len(top), len(queries)), 6)
    hit_rows = -(-len(top) // cols)
    title = [line for line in lines if line.startswith(("query:", "edited:"))]
    if store_has_random_weights(t.store):
        title.append(WARNING)
    fig, axes = plt.subplots(1 + hit_rows, cols, figsize=(1.9 * cols, 1.9 * (1 + hit_rows) + 0.3 * len(title) + 0.3),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, q in enumerate(queries[:cols]):
        ax = axes[0, j]
        if isinstance(q, PILImage.Image):
            ax.imshow(q)
        elif isinstance(q, (int, np.integer)):
            ax.imshow(loaded[int(q)])
        else:
            ax.text(0.5, 0.5, str(q), ha="center", va="center", wrap=True, fontsize=9)
        ax.set_title("query" if len(queries) == 1 else f"query {j + 1} of {len(queries)}", fontsize=9)
    keys = t.store.keys()
    for j, (img, s) in enumerate(zip(top, hits.scores_K)):
        ax = axes[1 + j // cols, j % cols]
        ax.imshow(loaded[int(img)])
        ax.set_title(f"{j + 1}. {keys[img]}\n{s:.3g}", fontsize=7)
    fig.suptitle("\n".join(_wrap(line) for line in title), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _wrap(line: str, width: int = 100) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(line, width))
