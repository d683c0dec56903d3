"""What the report shows, computed from the cached codes: one record per live feature and the index.

Every number comes from the codes (and, for neighbours, the SAE's decoder); nothing is recomputed
through the model. A feature is live when it fired on at least one encoded token.
"""

import base64
from dataclasses import dataclass

import numpy as np

from clipsae.analysis.features import density as density_mod
from clipsae.analysis.features.interval_samples import IntervalSamples
from clipsae.analysis.features.label_entropy import LabelEntropy
from clipsae.analysis.features.nearest_features import Nearest
from clipsae.analysis.features.top_images import TopImages
from clipsae.analysis.report.siblings import Matching, UniversalLatents


def sig(x, digits: int = 4):
    """A float for JSON: ``digits`` significant digits, None for nan."""
    x = float(x)
    return None if np.isnan(x) else float(f"{x:.{digits}g}")


@dataclass
class PatchMaps:
    """Patch maps of (feature, image) pairs: row p of ``maps_PG`` is feature_P[p] on image_P[p]."""

    grid: tuple[int, int] | None
    feature_P: np.ndarray
    image_P: np.ndarray
    maps_PG: np.ndarray

    def __post_init__(self):
        order = np.lexsort((self.image_P, self.feature_P))
        self._keys = (self.feature_P.astype(np.int64) << 32 | self.image_P)[order]
        self._order = order

    def get(self, feature: int, image: int) -> str | None:
        """The map as base64 of grid-rows × grid-cols bytes, or None without a grid."""
        if self.grid is None:
            return None
        key = (feature << 32) | image
        j = int(np.searchsorted(self._keys, key))
        return base64.b64encode(self.maps_PG[self._order[j]].tobytes()).decode("ascii")


@dataclass(frozen=True)
class ClassMaps:
    """Where each class covers an image's patches, from the store's patch labels (images × patches)."""

    labels_IP: np.ndarray
    index_of: dict[str, int]  # class name → mask class index

    def get(self, name: str, image: int) -> str | None:
        """Base64 of the grid's bytes, 255 where the patch is of class ``name``, else 0; None for an unknown class."""
        if name not in self.index_of:
            return None
        cells = ((self.labels_IP[image] == self.index_of[name]) * 255).astype(np.uint8)
        return base64.b64encode(cells.tobytes()).decode("ascii")


@dataclass(frozen=True)
class FeatureContent:
    """Everything the per-feature pages are made of, for all features at once."""

    top: TopImages
    samples: IntervalSamples
    dens: density_mod.Density
    entropy: LabelEntropy
    entropy_top: TopImages
    labels: np.ndarray
    keys: np.ndarray
    class_names: dict[int, str]
    nearest: Nearest | None
    names: dict[int, list[tuple[str, float, str]]]
    matchings: list[Matching]
    maps: PatchMaps
    ms_F: np.ndarray | None = None  # monosemanticity scores, where the store has image embeddings
    attributes: dict | None = None  # from probe.csv: feature → [(attribute, statistic, value)]
    random_weights: bool = False  # the store's model was not pretrained: names and zero-shot figures mean nothing
    segments: dict | None = None  # from patch_probe.csv: feature → [(class, AP, probe_r)], best first
    class_maps: "ClassMaps | None" = None  # the store's patch labels, to show where a class is
    universal: UniversalLatents | None = None  # analyze universal's figures, where these codes are a universal SAE's
    universal_images: dict | None = None  # key → this store's image index, for the other models' top images

    @property
    def live(self) -> np.ndarray:
        return np.nonzero(~self.dens.dead_F)[0]

    def label_name(self, label: int) -> str:
        if label < 0:
            return "(no label)"
        return self.class_names.get(label, str(label))

    def _image(self, f: int, img: int, value: float, token: int) -> dict:
        label = int(self.labels[img])
        return {"image": int(img), "key": str(self.keys[img]), "label": label, "label_name": self.label_name(label),
                "value": sig(value), "token": int(token), "map": self.maps.get(f, int(img))}

    def _universal(self, f: int) -> dict:
        """Latent f across the universal SAE's models: its universality, and per model its energy share, firing
        rate and (for the other models) its top images there."""
        u, row = self.universal, self.universal.rows[f]
        models = []
        for m, hook in sorted(u.hooks.items()):
            top = [] if m == u.model else [
                {"image": self.universal_images[k], "key": k, "label_name": self.label_name(int(self.labels[self.universal_images[k]]))}
                for k in u.top_keys.get(f, {}).get(m, []) if k in self.universal_images]
            models.append({"model": m, "hook": hook, "this": m == u.model, "energy": sig(float(row[f"energy_m{m}"])),
                           "fire_rate": sig(float(row[f"fire_rate_m{m}"])), "top": top})
        return {"universality": sig(float(row["universality"])), "models": models}

    def _label_histogram(self, f: int) -> list[dict]:
        imgs, vals = self.entropy_top.images_FK[f], self.entropy_top.values_FK[f]
        used = imgs >= 0
        labels = self.labels[imgs[used]]
        total = vals[used].sum()
        out = []
        for lab in np.unique(labels):
            mine = labels == lab
            out.append({"label": int(lab), "name": self.label_name(int(lab)), "count": int(mine.sum()),
                        "share": sig(vals[used][mine].sum() / total) if total > 0 else None})
        return sorted(out, key=lambda r: (-r["count"], r["label"]))

    def record(self, f: int, links: dict) -> dict:
        """The JSON of feature ``f``'s page. ``links``: hrefs of the previous and next live features
        and of the index, and ``match_folders``, the other reports' feature folders, one per matching."""
        d, e = self.dens, self.entropy
        top = [self._image(f, img, v, t) for img, v, t in
               zip(self.top.images_FK[f], self.top.values_FK[f], self.top.tokens_FK[f]) if img >= 0]
        m, q = float(self.top.values_FK[f, 0]), self.samples.n_intervals
        intervals = []
        for j in reversed(range(q)):
            imgs = self.samples.images_FQS[f, j]
            intervals.append({"low": sig(m * j / q), "high": sig(m * (j + 1) / q),
                              "images": [self._image(f, img, v, t) for img, v, t in
                                         zip(imgs, self.samples.values_FQS[f, j], self.samples.tokens_FQS[f, j])
                                         if img >= 0]})
        rec = {
            "feature": int(f),
            "tokens_fired": int(d.tokens_fired_F[f]), "images_fired": int(d.images_fired_F[f]),
            "density_tokens": sig(d.density_tokens_F[f]), "density_images": sig(d.density_images_F[f]),
            "max": sig(m), "mean_top20": sig(d.mean_top_F[f]), "dense": bool(d.dense_F[f]),
            "entropy": sig(e.entropy_F[f]), "entropy_norm": sig(e.entropy_norm_F[f]), "labelled_top": int(e.n_F[f]),
            "top_label": self.label_name(int(e.top_label_F[f])) if e.n_F[f] else None,
            "labels": self._label_histogram(f),
            "top": top, "intervals": intervals, "grid": list(self.maps.grid) if self.maps.grid else None,
            "names": [{"word": w, "score": sig(s), "method": meth} for w, s, meth in self.names.get(f, [])],
            "nearest": None, "matches": [], "links": links, "random_weights": self.random_weights,
        }
        if self.ms_F is not None:
            rec["ms"] = sig(self.ms_F[f])
        rec["attributes"] = [{"attribute": a, "statistic": st, "value": sig(v)}
                             for a, st, v in (self.attributes or {}).get(f, [])]
        rec["segments"] = [{"class": c, "ap": sig(ap), "probe_r": sig(pr)} for c, ap, pr in (self.segments or {}).get(f, [])]
        if rec["segments"] and top and self.class_maps is not None:
            best = rec["segments"][0]["class"]
            rec["segment_map"] = {**top[0], "class": best, "class_map": self.class_maps.get(best, top[0]["image"])}
        if self.nearest is not None:
            rec["nearest"] = [{"feature": int(j), "cosine": sig(c), "live": bool(not d.dead_F[j])}
                              for j, c in zip(self.nearest.features_FN[f].tolist(), self.nearest.cosine_FN[f].tolist())]
        if self.universal is not None and f in self.universal.rows:
            rec["universal"] = self._universal(f)
        for mt, folder in zip(self.matchings, links.pop("match_folders")):
            if f in mt.b_of_a:
                b, r = mt.b_of_a[f]
                rec["matches"].append({"other": mt.label, "feature": b, "corr": sig(r), "href": f"{folder}/{b}.html"})
        return rec

    def table(self) -> dict:
        """The index's table of live features, column by column (compact to load)."""
        live, d, e = self.live, self.dens, self.entropy
        return {
            "feature": live.tolist(),
            "density_images": [sig(x, 3) for x in d.density_images_F[live]],
            "density_tokens": [sig(x, 3) for x in d.density_tokens_F[live]],
            "mean_top20": [sig(x, 3) for x in d.mean_top_F[live]],
            "entropy": [sig(x, 3) for x in e.entropy_F[live]],
            "top_label": [self.label_name(int(e.top_label_F[f])) if e.n_F[f] else None for f in live],
            "name": [self.names[f][0][0] if f in self.names else None for f in live],
            "ms": None if self.ms_F is None else [sig(x, 3) for x in self.ms_F[live]],
        }
