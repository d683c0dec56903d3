"""A universal SAE's training rows: several stores' hooks joined by image key (``--universal A:HOOK,B:HOOK``).

The first store leads: its images, in its order, that every store holds (matched by their webdataset
``__key__``) are the run's images, and its chunks are the stream's chunks. For each chunk the other stores'
rows of the same images are read (a store extracted from the same shards in the same order is read chunk
for chunk; another order costs more reads) and put beside the lead's: a joined row is [x_1 | … | x_M] for
one image and one token position, each model's block times its factor c_m = √d_m / E‖x_m‖, so that every
model enters with the same scale per dimension whatever its activations' size. Tokens are aligned by
position: image-level rows (``--tokens cls``, or hooks with one token per image), or patches where the
selected tokens are as many in every store, or patches average-pooled to a common grid (``--grid RxC``,
``--tokens patches``: each store's patch grid cut into R×C cells as evenly as it divides, PyTorch's adaptive
average pooling, each cell's patches averaged).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clipsae.errors import ClipsaeError
from clipsae.store.location import absolute
from clipsae.store.reader import ActivationStore
from clipsae.train.data import RowSource

MIN_COMMON_IMAGES = 10  # fewer shared images than this: stores of different images that share a few keys by chance
FACTOR_ROWS = 16384  # rows per model sampled for its factor


def parse_universal(text: str) -> list[tuple[str, str]]:
    """``A.zarr:resid.10,B.zarr:layer4`` as [(store, hook), …]; one line for each malformed form."""
    pairs = []
    for item in (x.strip() for x in str(text).split(",")):
        store, sep, hook = item.rpartition(":")
        if not sep or not store or not hook or store.endswith("/"):
            raise ClipsaeError(f"--universal item {item!r} is not STORE:HOOK (e.g. acts.zarr:resid.10)")
        if (store, hook) in pairs:
            raise ClipsaeError(f"--universal names {store}:{hook} twice; each model's store and hook once")
        pairs.append((store, hook))
    if len(pairs) < 2:
        raise ClipsaeError("--universal needs at least two STORE:HOOK items (one per model); for one model use --store "
                           "and --hook")
    return pairs


@dataclass
class UniversalData:
    """The stores, hooks and image alignment of a universal run; ``factors`` once :meth:`measure_factors` ran."""

    stores: list[ActivationStore]
    hooks: list[str]
    token_idx: list[np.ndarray]
    common: np.ndarray  # (lead images,) bool: held by every store
    index: list[np.ndarray]  # per store, the index of each lead image in it (−1 where it lacks the key)
    factors: list[float]
    grid: tuple[int, int] | None = None  # the common grid patches are pooled to, where asked

    @classmethod
    def open(cls, pairs: list[tuple[str, str]], tokens: str, factors: list[float] | None = None,
             grid: tuple[int, int] | None = None) -> "UniversalData":
        stores = [ActivationStore.open(s) for s, _ in pairs]
        hooks = [h for _, h in pairs]
        for st, h in zip(stores, hooks):
            if h not in st.hooks:
                raise ClipsaeError(f"{st.path} has no hook {h!r} (it has {', '.join(st.hooks)})")
            if st.n_images == 0:
                raise ClipsaeError(f"{st.path} holds no complete images; run `clipsae extract` first")
        token_idx = [st.token_indices(h, tokens) for st, h in zip(stores, hooks)]
        if grid is not None:
            _check_grid(stores, hooks, tokens, grid)
        counts = {len(t) for t in token_idx}
        if grid is None and len(counts) > 1:
            said = ", ".join(f"{st.path.name}:{h} {len(t)}" for st, h, t in zip(stores, hooks, token_idx))
            raise ClipsaeError(f"--tokens {tokens} selects different numbers of tokens per image ({said}): tokens are "
                               f"aligned by position, so train on image-level rows (--tokens cls, or pooled hooks) or "
                               f"on hooks with the same patch grid, or pool the patches to a common one (--tokens patches "
                               f"--grid RxC)")
        lead_keys = stores[0].keys()
        index = [np.arange(len(lead_keys))]
        common = np.ones(len(lead_keys), dtype=bool)
        for st in stores[1:]:
            idx = st.positions_of(lead_keys)
            index.append(idx)
            common &= idx >= 0
        n = int(common.sum())
        if n < MIN_COMMON_IMAGES:
            raise ClipsaeError(f"the stores share {n} image keys, fewer than the {MIN_COMMON_IMAGES} a universal SAE needs: "
                               f"they must hold activations of the same images (extracted from the same shards)")
        data = cls(stores, hooks, token_idx, common, index, factors or [], grid)
        if factors is None:
            data.factors = data.measure_factors()
        return data

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(st.d(h) for st, h in zip(self.stores, self.hooks))

    @property
    def rows_per_image(self) -> int:
        """Joined rows per image: the selected tokens, or the cells of the pooled grid."""
        return self.grid[0] * self.grid[1] if self.grid is not None else len(self.token_idx[0])

    @property
    def n_common(self) -> int:
        return int(self.common.sum())

    def measure_factors(self, seed: int = 0) -> list[float]:
        """c_m = √d_m / E‖x_m‖ over up to FACTOR_ROWS joined rows of the shared images (pooled where --grid), per model."""
        self.factors = [1.0] * len(self.stores)
        rows = self.source(self.common).sample(FACTOR_ROWS, seed).astype(np.float64)
        out, lo = [], 0
        for st, h, d in zip(self.stores, self.hooks, self.blocks):
            mean = float(np.linalg.norm(rows[:, lo:lo + d], axis=1).mean()) if len(rows) else 0.0
            lo += d
            if not mean > 0 or not math.isfinite(mean):
                raise ClipsaeError(f"hook {h} of {st.path} is all zeros or not finite on the shared images; nothing to train on")
            out.append(math.sqrt(d) / mean)
        return out

    def source(self, lead_mask: np.ndarray) -> "JoinedRowSource":
        """The joined rows of the shared lead images where ``lead_mask`` is true."""
        return JoinedRowSource(self, lead_mask & self.common)

    def describe(self) -> list[dict]:
        """What universal.json and the run's identity record of each model (stores absolute, as a job started
        elsewhere names them)."""
        return [{"store": str(absolute(st.path)), "hook": h, "d": st.d(h), "factor": c, "model": st.config.get("model"),
                 "pretrained": st.config.get("pretrained"), "tokens_per_image": len(t)}
                for st, h, c, t in zip(self.stores, self.hooks, self.factors, self.token_idx)]


class JoinedRowSource(RowSource):
    """RowSource's interface over joined rows: the lead store's chunks, each model's block beside the lead's."""

    def __init__(self, data: UniversalData, image_mask: np.ndarray):
        lead = data.stores[0]
        super().__init__(lead, data.hooks[0], data.token_idx[0], image_mask)
        self.data = data
        if data.grid is not None:  # the rows of an image are the pooled grid's cells (n_rows counts them)
            self.token_idx = np.arange(data.rows_per_image)
        self.d = sum(data.blocks)
        self.dtype = np.result_type(np.float32, *(st.dtype for st in data.stores))

    def rows(self, i: int) -> np.ndarray:
        c = self.chunks[i]
        sel = self.image_mask[c.start : c.stop]
        if not sel.any():
            return np.empty((0, self.d), dtype=self.dtype)
        blocks = []
        for m, (st, h, tok, c_m) in enumerate(zip(self.data.stores, self.data.hooks, self.data.token_idx,
                                                  self.data.factors)):
            if m == 0:
                acts_NTD = st.read_chunk(h, c)[sel]
            else:
                acts_NTD = st.read(h, self.data.index[m][c.start : c.stop][sel])
            acts_NTD = acts_NTD[:, tok] if len(tok) != acts_NTD.shape[1] else acts_NTD
            if self.data.grid is not None:
                acts_NTD = pool_patches(acts_NTD, st.layout(h).grid, self.data.grid)
            blocks.append(acts_NTD.reshape(-1, st.d(h)).astype(self.dtype) * self.dtype.type(c_m))
        return np.ascontiguousarray(np.concatenate(blocks, axis=1))


def parse_grid(text: str) -> tuple[int, int]:
    """``7x7`` as (7, 7); one line otherwise."""
    rows, sep, cols = str(text).lower().partition("x")
    try:
        grid = (int(rows), int(cols))
    except ValueError:
        grid = (0, 0)
    if not sep or min(grid) < 1:
        raise ClipsaeError(f"--grid {text!r} is not ROWSxCOLS (e.g. 7x7)")
    return grid


def _check_grid(stores, hooks, tokens: str, grid: tuple[int, int]) -> None:
    if tokens != "patches":
        raise ClipsaeError(f"--grid pools patches: give --tokens patches, not {tokens}")
    for st, h in zip(stores, hooks):
        have = st.layout(h).grid
        if have is None:
            raise ClipsaeError(f"hook {h} of {st.path} has no patch grid to pool to {grid[0]}x{grid[1]}")
        if grid[0] > have[0] or grid[1] > have[1]:
            raise ClipsaeError(f"--grid {grid[0]}x{grid[1]} is finer than hook {h}'s {have[0]}x{have[1]} grid in {st.path}: "
                               f"pooling only makes a grid coarser")


def pool_patches(acts_NPD: np.ndarray, have: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Patches (N, gh·gw, d) in row-major order, average-pooled to (N, R·C, d) (PyTorch's adaptive average pooling)."""
    if tuple(have) == tuple(grid):
        return acts_NPD
    n, _, d = acts_NPD.shape
    x = torch.from_numpy(np.ascontiguousarray(acts_NPD, dtype=np.float32)).view(n, have[0], have[1], d).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(x, grid).permute(0, 2, 3, 1).reshape(n, grid[0] * grid[1], d).numpy()


def universal_data(cfg) -> UniversalData | None:
    """The joined stores of a universal run's config (with the factors it recorded), or None for an ordinary run."""
    uni = cfg.extra.get("universal")
    if not uni:
        return None
    return UniversalData.open([(m["store"], m["hook"]) for m in uni["models"]], cfg.tokens,
                              [m["factor"] for m in uni["models"]], tuple(uni["grid"]) if uni.get("grid") else None)
