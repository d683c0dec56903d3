"""Writing an activation store: its root with the identity, and one part per input tar.

The group-written-in-parts protocol (one writer per part, the ``complete`` marker last, per-chunk
CRC32C) is store/parts.py's; this module is the activation schema on it (docs/store.md, "Layout").
"""

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store import layout
from clipsae.store import zarr_backend as zb
from clipsae.store.layout import HookLayout, grid_name
from clipsae.store.location import check_reachable, store_path
from clipsae.store.parts import GroupSchema, WritingPart, complete_names, open_group
from clipsae.store.stats import HookStats

ACTIVATIONS = GroupSchema("clipsae", layout.FORMAT_VERSION, nested="config", noun="activation store",
                          have="store has", verb="was", remedy="--store")


def check_store_path(path: str | Path) -> None:
    """Refuse a store path that is a file, or a directory that is not a clipsae store."""
    p = store_path(path)
    if p.is_file():
        raise ClipsaeError(f"store path {p} is a file, not a store directory")
    if p.is_dir() and any(p.iterdir()):
        if not zb.is_node(p):
            raise ClipsaeError(f"{p} exists and is not a Zarr store; choose an empty or new --store")
        attrs = zb.read_attributes(p)
        if attrs is None:
            raise ClipsaeError(f"{p / zb.META} is unreadable")
        if "clipsae" not in attrs:
            raise ClipsaeError(f"{p} is a Zarr store but not a clipsae activation store")


def _current_config(config: dict, version: int) -> dict:
    """A config with its hooks in today's form, so a format-1 store compares equal to a new run."""
    config = dict(config)
    config["hooks"] = {h: HookLayout.from_json(h, v, version, config.get("tokens")).to_json()
                       for h, v in config.get("hooks", {}).items()}
    return config


def open_root(path: str | Path, config: dict, provenance: dict) -> Path:
    """Create the store root, or open an existing one whose identity equals ``config``.

    ``config`` is what makes two runs compatible (model, weights, hooks, tokens, dtype,
    preprocessing); a mismatch raises, naming every difference, and writes nothing.
    """
    path = store_path(path)
    check_store_path(path)
    check_reachable(path)
    provenance = {**provenance, "zarr_version": zb.zarr_version(), "numpy_version": np.__version__}
    open_group(path, ACTIVATIONS, config, provenance, f"store {path}", comparable=_current_config)
    return path


class PartWriter(WritingPart):
    """Writes one activation part: its activations per hook, keys, labels, statistics and chunk checksums.

    Rows are buffered and written in whole chunks, so each chunk is written once.
    ``expected_images`` (e.g. the tar's sample count) sizes the chunks to fit the part.
    Nothing in the part counts until :meth:`close` sets the ``complete`` attribute.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        source: str,
        hooks: Sequence[HookLayout],
        dtype: str = "float16",
        compression: str = "none",
        chunk_bytes: int = layout.TARGET_CHUNK_BYTES,
        expected_images: int | None = None,
        patch_grids: Sequence[tuple[int, int]] = (),
    ):
        if compression not in layout.COMPRESSIONS:
            raise ClipsaeError(f"compression must be one of {', '.join(layout.COMPRESSIONS)}, not {compression!r}")
        super().__init__(store_path(root), name, {"source": source})
        self.dtype = np.dtype(dtype)
        zb.create_group(self.dir / layout.ACTS, {})
        self.stats: dict[str, HookStats] = {}
        self._arrays = {}
        for h in hooks:
            rows = layout.chunk_rows(h.n_tokens, h.d, self.dtype.itemsize, chunk_bytes, expected_images)
            self._arrays[h.name] = self.appender(h.name, (h.n_tokens, h.d), rows, dtype, compression,
                                                 at=f"{layout.ACTS}/{h.name}")
            self.stats[h.name] = HookStats()
        self._patch_arrays = {}
        if patch_grids:
            zb.create_group(self.dir / layout.PATCH_LABELS, {})
            zb.create_group(self.dir / layout.PATCH_LABEL_SHARE, {})
        for g in patch_grids:
            n = g[0] * g[1]
            rows = layout.chunk_rows(1, n, 2, chunk_bytes, expected_images)  # a row: n two-byte values
            self._patch_arrays[grid_name(g)] = tuple(
                self.appender(f"{array}/{grid_name(g)}", (n,), rows, dtype) for array, dtype in
                ((layout.PATCH_LABELS, "uint16"), (layout.PATCH_LABEL_SHARE, "float16")))
        self._keys: list[str] = []
        self._labels: list[int] = []

    @property
    def n_images(self) -> int:
        return len(self._keys)

    def append(
        self,
        keys: Sequence[str],
        labels: Sequence[int],
        acts: Mapping[str, np.ndarray],
        stats: Mapping[str, HookStats] | None = None,
        patch_labels: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        """Add a batch of images: ``acts[hook]`` is (len(keys), n_tokens, d).

        ``stats`` are the batch's statistics if the caller already has them (extraction
        computes them on the GPU); otherwise they are computed here. ``patch_labels[grid]`` is the
        images' (labels, shares), each (len(keys), patches), for every grid the part was made with.
        """
        if sorted(patch_labels or {}) != sorted(self._patch_arrays):
            raise ValueError(f"patch labels for grids {sorted(patch_labels or {})}, the part has {sorted(self._patch_arrays)}")
        for g, (labels_IP, share_IP) in (patch_labels or {}).items():
            self._patch_arrays[g][0].append(np.asarray(labels_IP, dtype=np.uint16))
            self._patch_arrays[g][1].append(np.asarray(share_IP, dtype=np.float16))
        for name, arr in acts.items():
            if arr.shape[0] != len(keys):
                raise ValueError(f"hook {name}: {arr.shape[0]} rows for {len(keys)} keys")
            with np.errstate(over="ignore"):  # overflow to inf is counted in the stats, not warned
                block = np.ascontiguousarray(arr, dtype=self.dtype)
            if stats is None:
                self.stats[name].update(block)
            else:
                self.stats[name] = self.stats[name].merge(stats[name])
            self._arrays[name].append(block)
        self._keys.extend(str(k) for k in keys)
        self._labels.extend(int(x) for x in labels)

    def close(self, extra_attrs: Mapping | None = None) -> None:
        """Write what is buffered, the keys and labels, then mark the part complete."""
        self.write_text(layout.KEYS, self._keys)
        self.write_small(layout.LABELS, np.asarray(self._labels, dtype=np.int64), fill_value=-1)
        super().close({**(extra_attrs or {}), "n_images": len(self._keys),
                       "hook_stats": {h: s.to_json() for h, s in self.stats.items()}})


def record_store_stats(path: str | Path, all_parts: set[str]) -> None:
    """Once every part of ``all_parts`` is complete, record store-wide hook statistics in the root.

    Any worker may be the last; each computes the same numbers from the same parts, and
    metadata files are replaced atomically, so concurrent finishers agree.
    """
    from clipsae.store.reader import ActivationStore

    if not all_parts <= complete_names(store_path(path) / layout.PARTS):
        return
    s = ActivationStore.open(path)
    zb.update_attributes(store_path(path), {"hook_stats": {h: s.hook_stats(h).to_json() for h in s.hooks},
                                      "n_images": s.n_images})


def write_store(
    path: str | Path,
    acts: Mapping[str, np.ndarray],
    keys: Sequence[str],
    labels: Sequence[int] | None = None,
    attrs: Mapping | None = None,
    dtype: str | None = None,
    part: str = "part-00000",
    layouts: Mapping[str, Mapping] | None = None,
    source: str = "write_store",
    mask_classes: Mapping[int, str] | None = None,
    patch_labels: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """Write activations computed elsewhere as a store (or one more part of one).

    ``acts[hook]`` is (n, n_tokens, d) or (n, d); ``keys`` name the n images uniquely;
    ``labels`` default to -1. ``attrs`` go into the store's identity (``model`` at least
    is expected); writing a second part with the same attrs and shapes extends the store.
    ``layouts[hook]`` describes a hook's tokens: ``cls_token`` (token 0 is CLS), ``registers`` (register
    tokens after it), ``grid``
    ((rows, cols) of the patch tokens that follow) and ``meaning`` (free text). ``source`` is the
    webdataset tar the images came from, where analyses read them back to show them.
    ``mask_classes`` (class index → name, 0 = unlabelled) and ``patch_labels`` (per patch grid name, as
    ``"16x16"``: each image's patches' labels and shares, (n, patches) each) go together, for every grid
    of the hooks.
    """
    keys = [str(k) for k in keys]
    n = len(keys)
    if len(set(keys)) != n:
        raise ClipsaeError("keys must be unique")
    labels = [-1] * n if labels is None else [int(x) for x in labels]
    if len(labels) != n:
        raise ClipsaeError(f"{len(labels)} labels for {n} keys")
    shaped = {h: (a[:, None, :] if a.ndim == 2 else a) for h, a in acts.items()}
    for h, a in shaped.items():
        if a.ndim != 3 or a.shape[0] != n:
            raise ClipsaeError(f"hook {h}: expected ({n}, n_tokens, d), got {tuple(a.shape)}")
    dtype = dtype or str(next(iter(shaped.values())).dtype)
    if dtype not in layout.DTYPES:
        raise ClipsaeError(f"dtype {dtype!r} not supported; use one of {', '.join(layout.DTYPES)}")
    try:
        hooks = [HookLayout(h, a.shape[1], a.shape[2], **{k: (tuple(v) if k == "grid" and v else v)
                                                           for k, v in (layouts or {}).get(h, {}).items()})
                 for h, a in shaped.items()]
    except (TypeError, ValueError) as exc:
        raise ClipsaeError(f"layouts: {exc}") from None
    grids = layout.patch_grids(hooks) if mask_classes is not None else ()
    if sorted(patch_labels or {}) != [grid_name(g) for g in grids]:
        raise ClipsaeError(f"patch_labels cover grids {sorted(patch_labels or {})}; with mask_classes they must cover "
                           f"the hooks' grids {[grid_name(g) for g in grids]}")
    user = dict(attrs or {})
    config = {
        "model": user.pop("model", "unknown"),
        "tokens": user.pop("tokens", "all"),
        "dtype": dtype,
        "hooks": {h.name: h.to_json() for h in hooks},
        **({layout.MASK_CLASSES: {str(k): v for k, v in mask_classes.items()}} if mask_classes is not None else {}),
        **user,
    }
    root = open_root(path, config, {"created_by": "clipsae.store.write_store"})
    writer = PartWriter(root, part, source=source, hooks=hooks, dtype=dtype, expected_images=n, patch_grids=grids)
    writer.append(keys, labels, shaped, patch_labels=patch_labels)
    writer.close()
