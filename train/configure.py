"""From a user's options to a checked training configuration: the one place ``clipsae train`` is validated.

The command line and ``clipsae demo`` both call :func:`configure_training`; anything wrong is a
ClipsaeError before a file is written, and anything surprising but allowed becomes a note.
"""

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore
from clipsae.train import archs
from clipsae.train.config import DEFAULT_BATCH, DEFAULT_DEAD_TOKENS, DEFAULT_WARMUP, TrainConfig
from clipsae.train.data import holdout_mask
from clipsae.train.spec import SAESpec

SWEEP_KEYS = ("arch", "expansion", "k", "l1")


@dataclass
class TrainingPlan:
    """A checked configuration, the store it reads, its holdout mask and notes for the user."""

    cfg: TrainConfig
    store: ActivationStore
    held: np.ndarray
    notes: list[str] = field(default_factory=list)


def parse_list(kind, value, name: str) -> list:
    """``"16,32"`` (or a list) as ``[16, 32]``; an empty item or a value of the wrong kind is refused."""
    if isinstance(value, str):
        items = [x.strip() for x in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items or any(isinstance(x, str) and not x for x in items):
        raise ClipsaeError(f"{name} {value!r} has an empty item; write e.g. 16,32")
    try:
        return [kind(x) for x in items]
    except (TypeError, ValueError):
        raise ClipsaeError(f"{name} must be a comma-separated list of {kind.__name__}s, not {value!r}") from None


def _specs(values: dict, d: int, options: dict, where: str = "--") -> list[SAESpec]:
    """Every combination of the comma lists in ``values``, each checked by its architecture."""
    lists = [parse_list(kind, values[key], f"{where}{key}") for key, kind in zip(SWEEP_KEYS, (str, int, int, float))]
    specs: list[SAESpec] = []
    for arch, e, k, l1 in itertools.product(*lists):
        spec = archs.get(arch).spec(d, e, k, l1, **options)
        if spec not in specs:
            specs.append(spec)
    return specs


def _sweep_specs(path: Path, defaults: dict, d: int, options: dict) -> list[SAESpec]:
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ClipsaeError(f"--sweep {path}: cannot read a JSON list of SAEs ({exc})") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ClipsaeError(f"--sweep {path} must hold a non-empty JSON list of objects")
    specs: list[SAESpec] = []
    for e in entries:
        unknown = set(e) - set(SWEEP_KEYS)
        if unknown:
            raise ClipsaeError(f"--sweep {path}: unknown keys {sorted(unknown)}; use {', '.join(SWEEP_KEYS)}")
        for spec in _specs({**defaults, **{k: str(x) for k, x in e.items()}}, d, options, f"--sweep {path}: "):
            if spec not in specs:
                specs.append(spec)
    return specs


# Fewer steps than the default warm-up: the learning rate never reaches its peak, and the metrics
# say little about what the SAE would learn.
MEANINGFUL_STEPS = DEFAULT_WARMUP


def _whole(value: float, option: str) -> int:
    """A token count given as a float (1e8) → int; fractions and negatives are refused."""
    if value < 0 or value != int(value):
        raise ClipsaeError(f"{option} must be a whole number of tokens, at least 0, not {value:g}")
    return int(value)


def configure_training(
    store: str | Path, hook: str | None = None, tokens: str = "all", arch: str | Sequence[str] = "topk",
    expansion: str | Sequence[int] = "16", k: str | Sequence[int] = "32", l1: str | Sequence[float] = "5",
    sweep: str | Path | None = None, lr: float | None = None, batch_size: int = DEFAULT_BATCH,
    tokens_total: float | None = None, steps: int | None = None, seed: int = 0, device: str = "auto",
    precision: str | None = None, holdout: float = 0.01, out: str | Path | None = None,
    warmup_steps: int = DEFAULT_WARMUP, dead_tokens: int = DEFAULT_DEAD_TOKENS, aux_alpha: float = 1 / 32,
    matryoshka_weighting: str = "uw", resample_every: int = 0, buffer_rows: int = 2**18, loader_threads: int = 2,
    eval_every: int = 0, eval_rows: int = 2**16, checkpoint_every: int = 0, checkpoint_minutes: float = 10.0,
    snapshot_every: float = 0,
    wandb_project: str | None = None,
) -> TrainingPlan:
    """Check every option against the store and each other; see ``clipsae train --help`` for their meaning."""
    from clipsae.device import resolve_device

    st = ActivationStore.open(store)
    if hook is None:
        if len(st.hooks) != 1:
            raise ClipsaeError(f"{store} has hooks {', '.join(st.hooks)}; choose one with --hook")
        hook = st.hooks[0]
    d = st.d(hook)
    token_idx = st.token_indices(hook, tokens)
    if st.n_images == 0:
        raise ClipsaeError(f"{store} holds no complete images; run `clipsae extract` first")
    if not 0 <= holdout < 1:
        raise ClipsaeError(f"--holdout must be in [0, 1), not {holdout}")
    if batch_size < 1:
        raise ClipsaeError(f"--batch-size must be at least 1, not {batch_size}")
    if aux_alpha < 0:
        raise ClipsaeError(f"--aux-alpha must be at least 0, not {aux_alpha}")
    if matryoshka_weighting not in ("uw", "rw"):
        raise ClipsaeError(f"--matryoshka-weighting must be uw or rw, not {matryoshka_weighting!r}")
    options = {"aux_alpha": aux_alpha, "matryoshka_weighting": matryoshka_weighting}
    values = {"arch": arch, "expansion": expansion, "k": k, "l1": l1}
    specs = _specs(values, d, options) if sweep is None else _sweep_specs(Path(sweep), values, d, options)
    if steps is not None and tokens_total is not None:
        raise ClipsaeError("give --steps or --tokens-total, not both")
    held = holdout_mask(st.keys(), holdout, seed)
    train_rows = int((~held).sum()) * len(token_idx)
    if batch_size > train_rows:
        raise ClipsaeError(f"--batch-size {batch_size} is more than the {train_rows} training rows of {hook} "
                           f"({tokens} tokens, {int((~held).sum())} images); use --batch-size {train_rows} or less")
    notes = []
    if steps is None:
        if tokens_total is not None and tokens_total < batch_size:
            raise ClipsaeError(f"--tokens-total {tokens_total:g} is less than one batch of {batch_size}")
        wanted = train_rows if tokens_total is None else tokens_total
        steps = math.ceil(wanted / batch_size)
        if tokens_total is not None and steps * batch_size != tokens_total:
            notes.append(f"--tokens-total {tokens_total:g} rounded up to {steps} whole batches: {steps * batch_size:,} tokens")
    if steps < MEANINGFUL_STEPS:
        notes.append(f"{steps} steps is too short to mean anything: the learning rate warms up over {MEANINGFUL_STEPS:,} "
                     f"steps and SAEs are trained for 10^4-10^5 steps; use --steps {MEANINGFUL_STEPS:,} or more (with "
                     f"{train_rows:,} training rows, {math.ceil(MEANINGFUL_STEPS * batch_size / train_rows):,} passes "
                     f"over them at --batch-size {batch_size}), or a bigger store")
    if snapshot_every and snapshot_every > steps * batch_size:
        notes.append(f"--snapshot-every {snapshot_every:g} is more than the run's {steps * batch_size:,} tokens: no snapshot "
                     f"will be written")
    if holdout == 0:
        notes.append("--holdout 0: no image is held out, so there is no held-out evaluation and no held-out metrics")
    dev = resolve_device(device)
    cfg = TrainConfig(
        store=st.path, store_images=st.n_images, hook=hook, tokens=tokens,
        out=Path(out) if out is not None else Path("runs") / f"{st.path.name.removesuffix('.zarr')}-{hook}-{tokens}",
        saes=tuple(specs), steps=steps, batch_size=batch_size, lr=lr, seed=seed, device=str(dev),
        precision=precision or ("bf16" if dev.type == "cuda" else "fp32"), holdout=holdout, warmup_steps=warmup_steps,
        dead_tokens=dead_tokens, resample_every=resample_every, buffer_rows=buffer_rows, loader_threads=loader_threads,
        eval_every=eval_every, eval_rows=eval_rows, checkpoint_every=checkpoint_every,
        checkpoint_minutes=checkpoint_minutes, snapshot_every=_whole(snapshot_every, "--snapshot-every"),
        wandb_project=wandb_project,
    )
    return TrainingPlan(cfg, st, held, notes)
