"""``clipsae encode``: run an SAE over a store's activations once and cache its codes in the store.

One codes part per store part, each written whole and marked complete last (store/codes.py),
so workers share a store part by part, and a rerun after ``kill -9`` redoes only the parts
that lack the marker. Memory holds one chunk of activations and one batch of codes.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clipsae.analysis import input_norm
from clipsae.analysis.encode_config import DEFAULT_MAX_ACTIVE, EncodeConfig
from clipsae.analysis.pooling import pool_batch, reconstruction_sums
from clipsae.device import resolve_device
from clipsae.errors import ClipsaeError
from clipsae.store import codes as codes_store
from clipsae.store import layout
from clipsae.store.codes import CodesBlock, CodesPartWriter, PartSums
from clipsae.store.parts import claim
from clipsae.store.reader import ActivationStore
from clipsae.train.load import load_sae
from clipsae.train.model import SparseAutoencoder
from clipsae.workers import worker_slot


@dataclass
class EncodeResult:
    """What one worker's run did."""

    name: str
    hook: str
    tokens: str
    parts_written: list[str] = field(default_factory=list)
    parts_skipped: list[str] = field(default_factory=list)
    images: int = 0
    tokens_capped: int = 0
    warning: str | None = None  # the hook was chosen against what the SAE records (see _choose_hook)
    damaged_redone: list[str] = field(default_factory=list)

    def summary(self, store) -> str:
        """One line for people: what was encoded, and how many token rows the cap cut."""
        capped = (f"; {self.tokens_capped} token rows had more active latents than the cap (see --max-active)"
                  if self.tokens_capped else "")
        damaged = (f"; {len(self.damaged_redone)} part(s) whose codes metadata was damaged encoded again "
                   f"({', '.join(self.damaged_redone[:3])})" if self.damaged_redone else "")
        return (f"encoded {self.images} images ({len(self.parts_written)} parts written, {len(self.parts_skipped)} "
                f"already done) of hook {self.hook} ({self.tokens} tokens) as codes {self.name!r} in {store}{capped}"
                f"{damaged}")


def _choose_hook(store: ActivationStore, sae: SparseAutoencoder, asked: str | None) -> tuple[str, str | None]:
    """The hook to encode and a warning, if any: ``asked``, else the hook the SAE's files record, else the
    store's only hook of the SAE's width. A recorded hook that names an extract hook the store lacks is
    refused; one that maps to no extract hook name (the tool's own) only warns."""
    recorded = sae.recorded("hook") or sae.recorded("hook_name")
    known = bool(recorded) and layout.EXTRACT_HOOK_NAME.fullmatch(str(recorded)) is not None
    if asked is not None:
        store.layout(asked)
        if known and recorded != asked:
            return asked, f"the SAE was trained on {recorded}; encoding {asked} as --hook asks"
        return asked, None
    if recorded in store.hooks:
        return recorded, None
    if known:
        raise ClipsaeError(f"the SAE was trained on {recorded}, which {store.path} does not hold (hooks: "
                           f"{', '.join(store.hooks)}); pass --hook to encode another anyway")
    fits = [h for h in store.hooks if store.d(h) == sae.d_in]
    if len(fits) == 1:
        note = (f"the SAE records its hook as {recorded!r}, which names no store hook; encoding {fits[0]}, the store's "
                f"only hook of width {sae.d_in} (pass --hook to choose)") if recorded else None
        return fits[0], note
    raise ClipsaeError(f"pass --hook: the SAE does not name one of the store's hooks ({', '.join(store.hooks)})")


def _identity(sae: SparseAutoencoder, hook: str, tokens: str, positions: np.ndarray, width: int,
              cls_encoded: bool, norm: dict | None) -> dict:
    """What makes two encodes the same; the SAE's path is recorded but may change (a moved folder).
    An input normalisation from the store is part of it (absent, as before it existed, when none)."""
    sae_id = {k: v for k, v in sae.identity.items() if k != "path"} | {"k": sae.k}
    identity = {"sae": sae_id, "hook": hook, "tokens": tokens, "token_positions": positions.tolist(), "width": width,
                "cls_encoded": cls_encoded}
    return identity | ({"input_norm": norm} if norm is not None else {})


def encode_batch(sae: SparseAutoencoder, batch_NTD: torch.Tensor, positions_T: torch.Tensor, width: int,
                 cls_position: int | None) -> tuple[CodesBlock, dict[str, torch.Tensor]]:
    """One batch of whole images on the SAE's device: its codes, in the cached form on the host, and its sums
    (on the device). The codes' read back to the host is pool_batch's, once per batch."""
    b, n_pos, d = batch_NTD.shape
    x_RD = batch_NTD.reshape(b * n_pos, d).float()
    codes = sae.encode_sparse(x_RD)
    block, latent_sums = pool_batch(codes, b, positions_T, sae.d_sae, width, cls_position)
    return block, latent_sums | reconstruction_sums(x_RD, sae.reconstruct_sparse(x_RD, codes), n_pos)


def _encode_part(store: ActivationStore, part_index: int, hook: str, positions: np.ndarray, sae: SparseAutoencoder,
                 writer: CodesPartWriter, width: int, cls_position: int | None, images_per_batch: int,
                 dev: torch.device, bar) -> PartSums:
    part = store.parts[part_index]
    n_pos, d = len(positions), store.d(hook)
    sums = {name: torch.zeros(shape, dtype=dtype, device=dev) for name, shape, dtype in (
        ("latent_tokens_fired", sae.d_sae, torch.int64), ("latent_images_fired", sae.d_sae, torch.int64),
        ("latent_sum", sae.d_sae, torch.float64), ("latent_sumsq", sae.d_sae, torch.float64),
        ("position_sq_err", n_pos, torch.float64), ("position_x_sq", n_pos, torch.float64),
        ("position_x_sum", (n_pos, d), torch.float64))}
    capped = 0
    chunks = store.part_chunks(hook, part_index)
    every = len(positions) == store.n_tokens(hook)
    positions_T = torch.from_numpy(positions).to(dev)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipsae-encode") as pool:
        pending = pool.submit(store.read_chunk, hook, chunks[0]) if chunks else None
        for j, _ in enumerate(chunks):
            acts_NTD = pending.result()
            if j + 1 < len(chunks):
                pending = pool.submit(store.read_chunk, hook, chunks[j + 1])
            if not every:
                acts_NTD = acts_NTD[:, positions]
            for s in range(0, len(acts_NTD), images_per_batch):
                batch = torch.from_numpy(np.ascontiguousarray(acts_NTD[s:s + images_per_batch])).to(dev)
                b = len(batch)
                block, batch_sums = encode_batch(sae, batch, positions_T, width, cls_position)
                for name, value in batch_sums.items():
                    sums[name] += value
                capped += int((block.token_active_R > width).sum())
                writer.append(block)
                bar.update(b)
    host = {name: t.cpu().numpy() for name, t in sums.items()}
    return PartSums(**host, n_images=part.n_images, tokens_capped=capped)


@dataclass(frozen=True)
class OpenedCodes:
    """A store, an SAE and the codes group they write, with what was chosen for them."""

    store: ActivationStore
    sae: SparseAutoencoder
    hook: str
    tokens: str
    positions: np.ndarray
    cls_position: int | None
    width: int
    path: Path
    warning: str | None = None


def open_encode(cfg: EncodeConfig, device: torch.device) -> OpenedCodes:
    """Check the store and SAE, choose hook, tokens and cap, and create (or check) the codes group."""
    store = ActivationStore.open(cfg.store)
    if store.incomplete_parts:
        raise ClipsaeError(f"{cfg.store} has {len(store.incomplete_parts)} incomplete parts (extract is running or was "
                           f"interrupted); finish `clipsae extract` first, so that workers agree on the parts")
    if not store.parts:
        raise ClipsaeError(f"{cfg.store} has no complete parts to encode")
    sae = load_sae(cfg.sae, device=str(device), sae_format=cfg.sae_format, sae_options=cfg.sae_options).eval()
    hook, warning = _choose_hook(store, sae, cfg.hook)
    store.require_finite(hook)
    if store.d(hook) != sae.d_in:
        raise ClipsaeError(f"the SAE reads {sae.d_in}-dimensional inputs but hook {hook} of {cfg.store} has d={store.d(hook)}")
    tokens = cfg.tokens or sae.recorded("tokens") or "all"
    positions = store.token_indices(hook, tokens)
    lay = store.layout(hook)
    cls_position = 0 if (lay.cls_token or lay.n_tokens == 1) and positions[0] == 0 else None
    width = cfg.max_active or sae.max_active or DEFAULT_MAX_ACTIVE
    norm = None
    if cfg.input_norm == "store":
        norm = (input_norm.recorded_statistics(codes_store.recorded_identity(store.path, cfg.codes_name), hook, tokens)
                or input_norm.store_statistics(store, hook, tokens))
        input_norm.apply(sae, norm)
    path = codes_store.open_codes(store.path, cfg.codes_name,
                                  _identity(sae, hook, tokens, positions, width, cls_position is not None, norm),
                                  {"sae_path": sae.identity["path"]})
    return OpenedCodes(store, sae, hook, tokens, positions, cls_position, width, path, warning)


@torch.no_grad()
def run_encode(cfg: EncodeConfig) -> EncodeResult:
    """Encode every store part this worker owns that has no complete codes part yet."""
    n_workers, index = worker_slot(cfg.num_workers, cfg.worker_index)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = resolve_device(cfg.device)
    o = open_encode(cfg, dev)
    store, sae, positions, width, path = o.store, o.sae, o.positions, o.width, o.path
    name = cfg.codes_name
    # A part whose metadata was damaged is encoded again, and said so.
    mine = claim(range(len(store.parts)), lambda i: store.parts[i].name, path / layout.PARTS, n_workers, index)
    todo = mine.todo
    result = EncodeResult(name, o.hook, o.tokens, parts_skipped=[store.parts[i].name for i in mine.skipped],
                          warning=o.warning, damaged_redone=mine.damaged)
    images_per_batch = max(1, cfg.batch_size // len(positions))
    total = sum(store.parts[i].n_images for i in todo)
    with tqdm(total=total, unit="img", desc=f"encode {name}", disable=not cfg.progress, dynamic_ncols=True) as bar:
        for i in todo:
            part = store.parts[i]
            writer = CodesPartWriter(path, part.name, part.n_images, len(positions), width, sae.d_sae,
                                     o.cls_position is not None)
            sums = _encode_part(store, i, o.hook, positions, sae, writer, width, o.cls_position, images_per_batch,
                                dev, bar)
            writer.close(sums)
            result.parts_written.append(part.name)
            result.images += part.n_images
            result.tokens_capped += sums.tokens_capped
    return result
