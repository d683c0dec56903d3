"""One set of codes as the explorer serves it: the codes, their index, their store's images and keys,
and the model behind them (loaded on first need). Every answer of the JSON API is made here, as plain
dicts; app.py only maps HTTP onto these methods."""

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsae.analysis.class_names import class_names
from clipsae.analysis.explore.index import TOP_SHOWN, FeatureIndex, ensure_index
from clipsae.analysis.explore.live import LiveModel, TokenCodes
from clipsae.analysis.explore.tar_images import TarImages
from clipsae.analysis.features.density import Density
from clipsae.analysis.features.label_entropy import LabelEntropy
from clipsae.analysis.features.nearest_features import Nearest
from clipsae.analysis.features.patch_maps import cell_of_token, patch_maps, token_maps
from clipsae.analysis.random_weights import store_has_random_weights
from clipsae.analysis.report import siblings
from clipsae.analysis.report.content import FeatureContent, PatchMaps, sig
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes, default_analysis_dir
from clipsae.store.reader import ActivationStore

FEATURES_LISTED = 32  # an image's features listed by default
SORTS = {"feature": None, "density": "density_images", "density_tokens": "density_tokens", "mean_top": "mean_top",
         "label_entropy": "entropy", "monosemanticity": "ms", "top_label": None, "name": None}


class NotFound(ClipsaeError):
    """An unknown codes name, feature, key or upload: the API answers 404."""


class BadRequest(ClipsaeError):
    """Input the API refuses: 400."""


@dataclass(frozen=True)
class ImageRef:
    """A store image (``image`` its global index) or an upload (``upload`` its id and codes)."""

    key: str
    image: int | None = None
    label: int = -1
    upload: str | None = None


class KeyIndex:
    """Image keys → global indices without a dict of a million strings: keys sorted once, found by bisection."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        order = np.argsort(keys, kind="stable")
        self._order = order.astype(np.int32 if len(keys) < 2**31 else np.int64)
        # As UTF-8 bytes (a quarter of numpy's 4-byte characters), which sort in the same order.
        self._sorted = np.char.encode(keys[order].astype(str), "utf-8")

    def find(self, key: str) -> int | None:
        want = key.encode("utf-8")
        j = int(np.searchsorted(self._sorted, want))
        if j < len(self._sorted) and self._sorted[j] == want:
            return int(self._order[j])
        return None


def _b64(cells: np.ndarray) -> str:
    return base64.b64encode(cells.astype(np.uint8).tobytes()).decode("ascii")


class ServedCodes:
    """The codes ``name`` of the store at ``store_path``, served under ``label``."""

    def __init__(self, label: str, store_path: str | Path, name: str, device: str, progress: bool = True):
        self.label = label
        self.store = ActivationStore.open(store_path)
        self.codes = Codes(self.store, name)
        self.index: FeatureIndex = ensure_index(self.codes, progress=progress)
        self.keys = KeyIndex(self.store.keys())
        self.labels = self.store.labels()
        self.class_names = class_names(self.store)
        self.images = TarImages(self.store)
        self.live = LiveModel(self.codes, device)
        self.layout = self.store.layout(self.codes.hook)
        grid = self.layout.grid
        self.grid = tuple(grid) if grid is not None and self.codes.n_positions > 1 else None
        self._cell_T = cell_of_token(self.codes.token_positions, self.layout)
        analysis = default_analysis_dir(self.store.path, name)
        self.names = siblings.feature_names(analysis)
        self.neurons = siblings.neuron_alignment(analysis)
        self.matchings = siblings.matchings(analysis)
        self.universal = siblings.universal_latents(analysis)
        self.random_weights = store_has_random_weights(self.store)
        self._content = self._feature_content()
        stats = self.index.stats
        self.label_name = self._content.label_name  # the report's naming of labels, "(no label)" for −1
        self._top_label_names = np.array([self.label_name(int(lab)) if n else "" for lab, n in
                                          zip(stats["top_label"], stats["labelled_top"])], dtype=object)
        self.live_features = np.nonzero(~np.asarray(stats["dead"]))[0]
        self._live_densities = np.sort(np.asarray(stats["density_images"])[self.live_features])
        self._first_name = np.array([self.names[f][0][0] if f in self.names else "" for f in range(self.n_features)],
                                    dtype=object)

    # -- what the codes are ------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.codes.d_sae

    def describe(self) -> dict:
        sae = self.codes.identity["sae"]
        return {"name": self.label, "hook": self.codes.hook, "model": self.store.config.get("model"),
                "pretrained": self.store.config.get("pretrained"),
                "sae": {"architecture": sae.get("architecture"), "d_sae": sae["d_sae"], "k": sae.get("k"),
                        "path": self.codes.identity.get("provenance", {}).get("sae_path")},
                "n_features": self.n_features, "n_images": self.store.n_images, "tokens": self.codes.identity["tokens"],
                "grid": list(self.grid) if self.grid else None, "cls": bool(self.layout.cls_token), "registers": self.layout.registers,
                "live": len(self.live_features), "random_weights": self.random_weights,
                "classes": len(self.class_names)}

    def feature(self, text) -> int:
        """A feature number from a request; 404 where there is no such feature."""
        try:
            f = int(text)
        except (TypeError, ValueError):
            raise BadRequest(f"feature {text!r} is not a number") from None
        if not 0 <= f < self.n_features:
            raise NotFound(f"no feature {f}: codes {self.label!r} have {self.n_features} (0–{self.n_features - 1})")
        return f

    def image_of_key(self, key: str) -> ImageRef:
        img = self.keys.find(key)
        if img is None:
            raise NotFound(f"the store of codes {self.label!r} holds no image with key {key!r}")
        return ImageRef(key, img, int(self.labels[img]))

    # -- the features table --------------------------------------------------------------------------
    def table(self, sort: str = "feature", desc: bool = False, offset: int = 0, limit: int = 50, state: str = "live",
              min_density: float | None = None, max_density: float | None = None, label: str | None = None,
              name: str | None = None) -> dict:
        """A page of the features table, sorted and filtered; empty cells (nan, no label) sort last."""
        if sort not in SORTS:
            raise BadRequest(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
        if state not in ("live", "dead", "dense", "all"):
            raise BadRequest(f"state must be live, dead, dense or all, not {state!r}")
        if not (0 <= offset and 1 <= limit <= 1000):
            raise BadRequest("offset must be at least 0 and limit between 1 and 1000")
        st = self.index.stats
        keep = {"live": ~st["dead"], "dead": st["dead"], "dense": st["dense"],
                "all": np.ones(self.n_features, dtype=bool)}[state].copy()
        if min_density is not None:
            keep &= st["density_images"] >= min_density
        if max_density is not None:
            keep &= st["density_images"] <= max_density
        if label:
            keep &= np.char.find(np.char.lower(self._top_label_names.astype(str)), label.lower()) >= 0
        if name:
            keep &= np.char.find(np.char.lower(self._first_name.astype(str)), name.lower()) >= 0
        feats = np.nonzero(keep)[0]
        if sort == "feature":
            order = feats[::-1] if desc else feats
        else:
            if sort in ("top_label", "name"):
                col = (self._top_label_names if sort == "top_label" else self._first_name)[feats].astype(str)
                empty = col == ""
                ranks = np.unique(col, return_inverse=True)[1].astype(np.float64)
            else:
                col = np.asarray(st[SORTS[sort]][feats], dtype=np.float64)
                empty = np.isnan(col)
                ranks = col
            ranks = -ranks if desc else ranks
            order = feats[np.lexsort((feats, np.where(empty, 0, ranks), empty))]
        page = order[offset:offset + limit]
        return {"total": int(len(feats)), "offset": offset, "rows": [self.row(int(f)) for f in page]}

    def row(self, f: int) -> dict:
        """Feature ``f``'s row of the features table."""
        st = self.index.stats
        return {"feature": f, "density": sig(st["density_images"][f], 3), "density_tokens": sig(st["density_tokens"][f], 3),
                "mean_top": sig(st["mean_top"][f], 3), "label_entropy": sig(st["entropy"][f], 3),
                "monosemanticity": sig(st["ms"][f], 3), "top_label": self._top_label_names[f] or None,
                "name": self._first_name[f] or None, "dead": bool(st["dead"][f]), "dense": bool(st["dense"][f])}

    # -- a feature's page ----------------------------------------------------------------------------
    def _feature_content(self) -> FeatureContent:
        ix, st = self.index, self.index.stats
        dens = Density(st["tokens_fired"], st["images_fired"], st["density_tokens"], st["density_images"],
                       st["mean_top"], st["dead"], st["dense"])
        ent = LabelEntropy(st["entropy"], st["entropy_norm"], st["labelled_top"], st["top_label"],
                           st["top_label_share"], 0)
        nearest = None if ix.nearest_features_FN is None else Nearest(ix.nearest_features_FN, ix.nearest_cosine_FN)
        empty = PatchMaps(self.grid, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.uint8))
        return FeatureContent(ix.top.first(TOP_SHOWN), ix.samples, dens, ent, ix.top, self.labels, self.keys.keys,
                              self.class_names, nearest, self.names, [], empty,
                              None if np.isnan(st["ms"]).all() else st["ms"], random_weights=self.random_weights,
                              universal=self.universal, universal_images=self._universal_images())

    def _universal_images(self) -> dict[str, int] | None:
        """Key → image of the top images ``analyze universal`` found for these codes' latents in the other models."""
        if self.universal is None:
            return None
        keys = {k for per_model in self.universal.top_keys.values() for ks in per_model.values() for k in ks}
        found = {k: self.keys.find(k) for k in sorted(keys)}
        return {k: i for k, i in found.items() if i is not None}

    def feature_record(self, f: int, links: dict) -> dict:
        """Feature ``f``'s page record, in the report's format (analysis/report/content.py), its patch
        maps read from the cached codes of the images it shows."""
        ix = self.index
        imgs = self.shown_images(f)
        feats = np.full(len(imgs), f, dtype=np.int64)
        top = float(ix.top.values_FK[f, 0])
        maps = (patch_maps(self.codes, feats, imgs, np.full(len(imgs), top if top > 0 else 1.0))
                if self.grid and len(imgs) else np.zeros((len(imgs), 0), np.uint8))
        content = FeatureContent(**{**self._content.__dict__, "maps": PatchMaps(self.grid, feats, imgs, maps)})
        rec = content.record(f, {**links, "match_folders": []})
        rec["codes"] = self.label
        rec["n_features"] = self.n_features
        if len(self._live_densities) and not self.index.stats["dead"][f]:
            # Where the feature sits in the density histogram: the share of live features firing on fewer images.
            below = np.searchsorted(self._live_densities, self.index.stats["density_images"][f], side="left")
            rec["density_rank"] = sig(below / len(self._live_densities), 3)
        if f in self.neurons:
            cos, neuron, above = self.neurons[f]
            rec["neuron"] = {"max_cos": sig(cos), "neuron": neuron, "above_random": above}
        for m in self.matchings:
            if f in m.b_of_a:
                b, r = m.b_of_a[f]
                rec["matches"].append({"other": m.label, "feature": b, "corr": sig(r), "store": m.other_store,
                                       "codes": m.other_codes, "href": None})
        return rec

    def shown_images(self, f: int) -> np.ndarray:
        """The images feature ``f``'s page shows: its top images and interval samples, ascending."""
        ix = self.index
        imgs = np.concatenate([ix.top.images_FK[f, :TOP_SHOWN], ix.samples.images_FQS[f].ravel()])
        return np.unique(imgs[imgs >= 0]).astype(np.int64)

    def cofiring(self, f: int, n: int = 10) -> list[dict]:
        """The features that fire most often on the images this feature's page shows (its top images and
        interval samples): for each, the share of those images it fires on and its mean value there."""
        imgs = self.shown_images(f)
        if not len(imgs):
            return []
        counts = np.zeros(self.n_features, np.int64)
        sums = np.zeros(self.n_features)
        for img in imgs:
            lat, val = self.codes.image_values(int(img))
            counts[lat] += 1
            sums[lat] += val
        counts[f] = 0
        order = np.lexsort((np.arange(self.n_features), -counts))[:n]
        return [{"feature": int(g), "share": sig(counts[g] / len(imgs), 3), "mean_value": sig(sums[g] / counts[g], 4),
                 "images": int(len(imgs))} for g in order if counts[g] > 0]

    def top_keys(self, f: int, n: int = 6) -> list[dict]:
        ix = self.index
        out = []
        for img, v in zip(ix.top.images_FK[f, :n], ix.top.values_FK[f, :n]):
            if img >= 0:
                out.append({"key": str(self.keys.keys[img]), "image": int(img), "value": sig(v)})
        return out

    def affinity(self, keys: list[str], n: int = 3) -> list[dict]:
        """The features of these codes that fire most strongly on the given images (by key), each scored
        by its mean over them of value / its own largest value: 1 where it fires at its maximum on all."""
        found = [img for img in (self.keys.find(k) for k in keys) if img is not None]
        if not found:
            return []
        score = np.zeros(self.n_features)
        top = np.asarray(self.index.top.values_FK[:, 0], dtype=np.float64)
        for img in found:
            lat, val = self.codes.image_values(int(img))
            score[lat] += val / np.where(top[lat] > 0, top[lat], 1.0)
        score /= len(found)
        order = np.lexsort((np.arange(self.n_features), -score))[:n]
        return [{"codes": self.label, "feature": int(g), "affinity": sig(score[g], 3), "images": len(found)}
                for g in order if score[g] > 0]

    # -- an image --------------------------------------------------------------------------------------
    def stored_token_codes(self, image: int) -> TokenCodes:
        lat_TK, val_TK = self.codes.token_codes(image)
        latents, values = self.codes.image_values(image)
        return TokenCodes(lat_TK, val_TK, latents, values)

    def patch_rows(self, patches: list[int] | None) -> np.ndarray | None:
        """The token rows of the given patches (0-based, row-major over the grid, CLS excluded)."""
        if patches is None:
            return None
        if self.grid is None:
            raise BadRequest(f"codes {self.label!r} hold no patch grid (tokens {self.codes.identity['tokens']})")
        n_cells = self.grid[0] * self.grid[1]
        bad = [p for p in patches if not 0 <= p < n_cells]
        if bad:
            raise BadRequest(f"patch {bad[0]} is outside the {self.grid[0]}×{self.grid[1]} grid (0–{n_cells - 1})")
        rows = np.nonzero(np.isin(self._cell_T, patches))[0]
        return rows

    def image_features(self, ref: ImageRef, tc: TokenCodes, patches: list[int] | None = None,
                       limit: int = FEATURES_LISTED) -> dict:
        """The image's features, largest first: each one's maximum over all the image's tokens, or over
        the listed patches; with each its patch map over the image (its code per patch / that maximum)."""
        rows = self.patch_rows(patches)
        if rows is None:
            latents, values = tc.image_latents, tc.image_max
        else:
            lat, val = tc.latents_TK[rows].ravel(), tc.values_TK[rows].ravel()
            ok = (lat >= 0) & (val > 0)
            latents, inverse = np.unique(lat[ok], return_inverse=True)
            values = np.zeros(len(latents), np.float32)
            np.maximum.at(values, inverse, val[ok])
        order = np.lexsort((latents, -values))[:limit]
        if self.grid:
            scale = np.where(values[order] > 0, values[order], 1.0)
            maps = token_maps(tc.latents_TK, tc.values_TK, latents[order], scale, self._cell_T,
                              self.grid[0] * self.grid[1])
        feats = []
        for i, j in enumerate(order):
            g, v = int(latents[j]), float(values[j])
            item = {"feature": g, "value": sig(v), "name": self._first_name[g] or None, "top": self.top_keys(g, 4)}
            if self.grid:
                item["map"] = _b64(maps[i])
            feats.append(item)
        return {"codes": self.label, "key": ref.key, "image": ref.image, "upload": ref.upload, "label": ref.label,
                "label_name": self.label_name(ref.label), "grid": list(self.grid) if self.grid else None,
                "patches": patches, "features": feats, "total": int(len(latents))}

    def random_image(self, rng: np.random.Generator, with_features: bool = True) -> int:
        """A store image drawn at random (one that fires some feature, where ``with_features``)."""
        for _ in range(64):
            img = int(rng.integers(self.store.n_images))
            if not with_features or len(self.codes.image_values(img)[0]):
                return img
        return img

