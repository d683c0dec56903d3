"""The explorer's index of one set of codes: what a page shows, computed once so that no page scans the codes.

Per feature: its top images (value, image, token), samples from its density intervals, density,
mean top-20 value, label entropy and top label, and its nearest features by decoder cosine (where
the SAE is found). Built in passes over the codes' parts; each pass saves its state after a part
(at most every ``SAVE_EVERY_S`` seconds), so a build killed at any moment resumes where it was and
ends with the same index. Kept in ``<codes>-analysis/explore-index/`` beside the codes (the codes are
never written), and reused while the codes' fingerprint (identity and every chunk's checksum) is
the one the index recorded; otherwise rebuilt.
"""

import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipsae.analysis.features import density as density_mod
from clipsae.analysis.features.interval_samples import N_INTERVALS, IntervalSamples, pick_block, samples_of
from clipsae.analysis.features.label_entropy import DEFAULT_MIN_HITS, label_entropy
from clipsae.analysis.features.top_images import StreamingTopK, TopImages
from clipsae.errors import ClipsaeError
from clipsae.files import atomic_write, write_json, write_text
from clipsae.store.codes import Codes, default_analysis_dir

INDEX_FOLDER = "explore-index"
INDEX_VERSION = 1
TOP_K = 20  # Fry's label entropy and mean top value use the top 20; pages show the first TOP_SHOWN
TOP_SHOWN = 12
PER_INTERVAL = 4
NEAREST = 10
SAVE_EVERY_S = 30.0
_META = "index.json"
_STATE = "state.npz"
_SEED = 0

STATS = ("images_fired", "tokens_fired", "density_images", "density_tokens", "mean_top", "dense", "dead",
         "entropy", "entropy_norm", "labelled_top", "top_label", "top_label_share", "ms")


def index_dir(codes: Codes) -> Path:
    """Where the index of ``codes`` lives: beside the codes' other analyses."""
    return Path(default_analysis_dir(codes.store.path, codes.name)) / INDEX_FOLDER


@dataclass(frozen=True)
class FeatureIndex:
    """The index of one set of codes, memory-mapped: (features, …) arrays read only where a page asks."""

    top: TopImages
    samples: IntervalSamples
    stats: dict[str, np.ndarray]
    nearest_features_FN: np.ndarray | None
    nearest_cosine_FN: np.ndarray | None
    meta: dict

    @property
    def n_features(self) -> int:
        return len(self.stats["dead"])


def _save_npy(folder: Path, name: str, arr: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file, not a name: np.save would add .npy to the temporary's
            np.save(fh, arr)

    atomic_write(folder / f"{name}.npy", write)


def _save_state(folder: Path, state: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **state)

    atomic_write(folder / _STATE, write)


class _Pass:
    """One resumable pass over the parts feeding a StreamingTopK; its state saved under ``name``."""

    def __init__(self, folder: Path, name: str, groups: int, k: int, progress: bool, total: int):
        self.folder, self.name = folder, name
        self.top = StreamingTopK(groups, k)
        self.next_part = 0
        path = folder / _STATE
        if path.is_file():
            with np.load(path) as st:
                if str(st["pass"]) == name and st["scores"].shape == self.top.scores.shape:
                    self.top.scores[:], self.top.images[:] = st["scores"], st["images"]
                    self.top.tokens[:], self.top.values[:] = st["tokens"], st["values"]
                    self.next_part = int(st["next_part"])
        self.progress, self.total = progress, total

    def run(self, codes: Codes, feed) -> StreamingTopK:
        parts = codes.store.parts
        done = sum(p.n_images for p in parts[:self.next_part])
        saved = time.monotonic()
        with tqdm(total=self.total, initial=done, unit="img", desc=f"explore index: {self.name}",
                  disable=not self.progress, dynamic_ncols=True) as bar:
            for i in range(self.next_part, len(parts)):
                for block in codes.iter_part_images(i):
                    feed(self.top, block)
                    bar.update(len(block.images_I))
                self.next_part = i + 1
                if self.next_part < len(parts) and time.monotonic() - saved >= SAVE_EVERY_S:
                    self.save()
                    saved = time.monotonic()
        return self.top

    def save(self) -> None:
        t = self.top
        _save_state(self.folder, {"pass": np.array(self.name), "next_part": np.array(self.next_part),
                                  "scores": t.scores, "images": t.images, "tokens": t.tokens, "values": t.values})


def _feed_top(top: StreamingTopK, block) -> None:
    top.update(block.latents_E, block.values_E, block.image_of_E, block.tokens_E)


def _samples(codes: Codes, folder: Path, top: TopImages, progress: bool) -> IntervalSamples:
    """The interval samples of analysis/features/interval_samples.py, by a resumable pass."""
    max_F = top.values_FK[:, 0].astype(np.float64)

    def feed(pick: StreamingTopK, block) -> None:
        pick_block(pick, block, max_F, N_INTERVALS, _SEED)

    pick = _Pass(folder, "intervals", codes.d_sae * N_INTERVALS, PER_INTERVAL + TOP_SHOWN, progress,
                 codes.n_images).run(codes, feed)
    return samples_of(pick, top.images_FK[:, :TOP_SHOWN], codes.d_sae, N_INTERVALS, PER_INTERVAL)


def _nearest(codes: Codes, sae_path: Path | None) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """Nearest features by decoder cosine, or (None, None, why) where the SAE is not found."""
    from clipsae.analysis.codes_sae import codes_sae
    from clipsae.analysis.features.nearest_features import nearest_features

    try:
        sae = codes_sae(codes, sae_path)
    except ClipsaeError as exc:
        return None, None, str(exc)
    near = nearest_features(sae.W_dec, NEAREST)
    return near.features_FN.numpy().astype(np.int32), near.cosine_FN.numpy(), None


def _monosemanticity(codes: Codes) -> np.ndarray:
    """Pach et al.'s score of every feature where the store has image embeddings, else all nan."""
    from clipsae.analysis.features.monosemanticity import embedding_hook, monosemanticity

    try:
        hook = embedding_hook(codes.store, None)
    except ClipsaeError:
        return np.full(codes.d_sae, np.nan)
    return monosemanticity(codes, hook, "max").ms_F


def _kept(folder: Path, name: str, compute) -> np.ndarray:
    """``name``'s array as a build before a kill saved it, or computed now and saved (a pass of its own)."""
    path = folder / f"{name}.npy"
    if path.is_file():
        return np.load(path)
    arr = np.asarray(compute())
    _save_npy(folder, name, arr)
    return arr


def _build(codes: Codes, folder: Path, fingerprint: str, sae_path: Path | None, progress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / _STATE
    mark = f"{INDEX_VERSION}:{fingerprint}"  # the version too: another version's arrays are never reused
    if (folder / _META).is_file() or _state_fingerprint(folder) != mark:
        # Another codes' index, or its unfinished build: start again. Its mark goes first, so that a kill during
        # the clean-up leaves nothing a rerun would take for this build's.
        (folder / "fingerprint").unlink(missing_ok=True)
        (folder / _META).unlink(missing_ok=True)
        for f in folder.iterdir():
            f.unlink()
        write_text(folder / "fingerprint", mark)
    if (folder / "top_tokens.npy").is_file():
        # The first pass finished before a kill: its result was kept (top_tokens is written last).
        top_images = TopImages(*(np.load(folder / f"top_{n}.npy") for n in ("images", "values", "tokens")))
    else:
        top = _Pass(folder, "top", codes.d_sae, TOP_K, progress, codes.n_images).run(codes, _feed_top)
        top_images = TopImages(top.images, top.values, top.tokens)
        for name, arr in (("top_images", top.images), ("top_values", top.values), ("top_tokens", top.tokens)):
            _save_npy(folder, name, arr)
    samples = _samples(codes, folder, top_images, progress)
    sums = codes.sums()
    dens = density_mod.density(sums, codes.n_positions, top_images)
    ent = label_entropy(top_images, codes.store.labels(), DEFAULT_MIN_HITS)
    stats = {"images_fired": dens.images_fired_F, "tokens_fired": dens.tokens_fired_F,
             "density_images": dens.density_images_F, "density_tokens": dens.density_tokens_F,
             "mean_top": dens.mean_top_F, "dense": dens.dense_F, "dead": dens.dead_F, "entropy": ent.entropy_F,
             "entropy_norm": ent.entropy_norm_F, "labelled_top": ent.n_F, "top_label": ent.top_label_F,
             "top_label_share": ent.top_label_share_F, "ms": _kept(folder, "stat_ms", lambda: _monosemanticity(codes))}
    for name, arr in stats.items():
        _save_npy(folder, f"stat_{name}", np.asarray(arr))
    for name, arr in (("interval_images", samples.images_FQS), ("interval_values", samples.values_FQS),
                      ("interval_tokens", samples.tokens_FQS)):
        _save_npy(folder, name, arr)
    near_f, near_c, why = _nearest(codes, sae_path)
    if near_f is not None:
        _save_npy(folder, "nearest_features", near_f)
        _save_npy(folder, "nearest_cosine", near_c)
    meta = {"version": INDEX_VERSION, "fingerprint": fingerprint, "codes": codes.name, "n_features": codes.d_sae,
            "n_images": codes.n_images, "top_k": TOP_K, "per_interval": PER_INTERVAL, "n_intervals": N_INTERVALS,
            "nearest": None if near_f is None else NEAREST, "nearest_missing": why}
    write_json(folder / _META, meta, indent=1)  # written last: its presence marks the index complete
    state.unlink(missing_ok=True)


def _state_fingerprint(folder: Path) -> str | None:
    path = folder / "fingerprint"
    return path.read_text() if path.is_file() else None


def _complete(folder: Path, fingerprint: str) -> dict | None:
    path = folder / _META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError):  # unreadable (a crash as it was written): as if absent, so it is built again
        return None
    return meta if meta.get("fingerprint") == fingerprint and meta.get("version") == INDEX_VERSION else None


def ensure_index(codes: Codes, sae_path: Path | None = None, progress: bool = True) -> FeatureIndex:
    """The index of ``codes``: read where it is complete and made from these very codes, else built
    (resuming an interrupted build). Processes that start at once on one store build it once: the
    others wait on a lock, then read it."""
    folder = index_dir(codes)
    fingerprint = codes.fingerprint()
    if _complete(folder, fingerprint) is None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{INDEX_FOLDER}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _complete(folder, fingerprint) is None:
                _build(codes, folder, fingerprint, sae_path, progress)
    return load_index(folder, fingerprint)


def load_index(folder: Path, fingerprint: str) -> FeatureIndex:
    """A complete index, its arrays memory-mapped."""
    meta = _complete(folder, fingerprint)
    if meta is None:
        raise ClipsaeError(f"{folder} holds no complete explorer index of these codes")

    def arr(name):
        return np.load(folder / f"{name}.npy", mmap_mode="r")

    near = meta["nearest"] is not None
    return FeatureIndex(TopImages(arr("top_images"), arr("top_values"), arr("top_tokens")),
                        IntervalSamples(arr("interval_images"), arr("interval_values"), arr("interval_tokens")),
                        {name: arr(f"stat_{name}") for name in STATS},
                        arr("nearest_features") if near else None, arr("nearest_cosine") if near else None, meta)
