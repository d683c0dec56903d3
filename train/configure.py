"""From a user's options to a checked training configuration: the one place ``clipsae train`` is validated.

The command line and ``clipsae demo`` both call :func:`configure_training`; anything wrong is a
ClipsaeError before a file is written, and anything surprising but allowed becomes a note.
"""

import itertools
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore
from clipsae.train import archs
from clipsae.train.config import DEFAULT_WARMUP, RunSettings, TrainConfig
from clipsae.train.data import holdout_mask
from clipsae.train.request import TrainRequest
from clipsae.train.spec import SAESpec

DEFAULT_K = "32"
SWEEP_KEYS = ("arch", "expansion", "k", "l1", "latents", "l0_coefficient", "target_l0")
_REQUEST = {f.name for f in fields(TrainRequest)} - {"store"}
_SETTINGS = {f.name for f in fields(RunSettings)}


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
    def named(key: str) -> str:
        return f"{where}{key.replace('_', '-') if where == '--' else key}"

    lists = [parse_list(kind, values[key], named(key)) if values.get(key) is not None else [None]
             for key, kind in zip(SWEEP_KEYS, (str, int, int, float, int, float, float))]
    specs: list[SAESpec] = []
    for arch, e, k, l1, n, c, target in itertools.product(*lists):
        if target is not None and target <= 0:
            raise ClipsaeError(f"{named('target_l0')} must be positive, not {target:g} (leave it out for the L0 penalty)")
        sparsity = {"l0_coefficient": c} if c is not None else {}
        sparsity |= {"target_l0": target} if target is not None else {}
        spec = archs.get(arch).spec(d, e, k, l1, latents=n, **options, **sparsity)
        if spec not in specs:
            specs.append(spec)
    return specs


def _sweep_specs(path: Path, defaults: dict, d: int, options: dict, k_given: bool) -> list[SAESpec]:
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ClipsaeError(f"--sweep {path}: cannot read a JSON list of SAEs ({exc})") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ClipsaeError(f"--sweep {path} must hold a non-empty JSON list of objects")
    specs: list[SAESpec] = []
    for e in entries:
        if str(e.get("arch", "")).strip() == "mp" and "k" not in e and not k_given:
            raise ClipsaeError(f"--sweep {path}: an mp entry needs its k (the pursuit's steps per token), or give --k")
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


UNIVERSAL_ARCHS = ("topk", "batchtopk", "matryoshka")


def configure_training(store: str | Path | None, **options) -> TrainingPlan:
    """Check every option (``TrainRequest``'s and ``RunSettings``' fields, by name) against the store and
    each other; see ``clipsae train --help`` for their meaning. ``store`` is None for a universal run
    (``universal="A.zarr:HOOK,B.zarr:HOOK"``)."""
    from clipsae.device import resolve_device

    unknown = set(options) - set(_REQUEST) - set(_SETTINGS)
    if unknown:
        raise TypeError(f"configure_training() got unknown options {sorted(unknown)}")
    req = TrainRequest(store=None if store is None else str(store), **{k: v for k, v in options.items() if k in _REQUEST})
    seeds = parse_list(int, req.seed, "--seed")
    if len(set(seeds)) != len(seeds):
        raise ClipsaeError(f"--seed {req.seed!r} names a seed twice")
    # The first seed orders the data and draws the holdout: the seeds of one run share both.
    run = RunSettings(**{k: v for k, v in options.items() if k in _SETTINGS and k != "seed"}, seed=seeds[0])
    hook, tokens, batch_size, steps = req.hook, req.tokens, run.batch_size, req.steps
    joined = _universal(req) if req.universal is not None else None
    if joined is not None:
        st, hook, d = joined.stores[0], joined.hooks[0], sum(joined.blocks)
        token_idx = np.arange(joined.rows_per_image)
    else:
        if req.store is None:
            raise ClipsaeError("give --store (or --universal STORE:HOOK,STORE:HOOK for a universal SAE)")
        st = ActivationStore.open(req.store)
        if hook is None:
            if len(st.hooks) != 1:
                raise ClipsaeError(f"{store} has hooks {', '.join(st.hooks)}; choose one with --hook")
            hook = st.hooks[0]
        d = st.d(hook)
        token_idx = st.token_indices(hook, tokens)
        if st.n_images == 0:
            raise ClipsaeError(f"{store} holds no complete images; run `clipsae extract` first")
    arch_options = {"aux_alpha": req.aux_alpha, "matryoshka_weighting": req.matryoshka_weighting,
                    "bandwidth": req.bandwidth, "sparsity_warmup": req.sparsity_warmup,
                    "candidates": req.candidates or 0, "delta": req.delta}
    if req.k is None and "mp" in parse_list(str, req.arch, "--arch") and req.sweep is None:
        raise ClipsaeError("--arch mp needs --k, the pursuit's steps per token (each costs an encoder product)")
    values = {"arch": req.arch, "expansion": req.expansion, "k": req.k or DEFAULT_K, "l1": req.l1, "latents": req.latents,
              "l0_coefficient": req.l0_coefficient, "target_l0": req.target_l0}
    specs = (_specs(values, d, arch_options) if req.sweep is None
             else _sweep_specs(Path(req.sweep), values, d, arch_options, req.k is not None))
    if joined is not None:
        specs = [_universal_spec(spec, joined.blocks, sel) for spec in specs
                 for sel in parse_list(str, req.selection, "--selection")]
    elif req.selection != "global" or req.grid is not None:
        raise ClipsaeError(f"--{'grid' if req.grid is not None else 'selection'} is a universal SAE's option: give --universal")
    if len(seeds) > 1:
        specs = [replace(spec, seed=seed) for spec in specs for seed in seeds]
    tokens_total = req.tokens_total
    if steps is not None and tokens_total is not None:
        raise ClipsaeError("give --steps or --tokens-total, not both")
    held = holdout_mask(st.keys(), run.holdout, run.seed)
    usable = ~held if joined is None else ~held & joined.common
    train_rows = int(usable.sum()) * len(token_idx)
    if batch_size > train_rows:
        raise ClipsaeError(f"--batch-size {batch_size} is more than the {train_rows} training rows of {hook} "
                           f"({tokens} tokens, {int(usable.sum())} images); use --batch-size {train_rows} or less")
    notes = []
    extra = {}
    if joined is not None:
        extra["universal"] = {"models": joined.describe(), "images": joined.n_common}
        if joined.grid is not None:
            extra["universal"]["grid"] = list(joined.grid)
        notes.append(f"universal: {joined.n_common:,} images held by all {len(joined.stores)} stores (of "
                     f"{', '.join(f'{s.n_images:,}' for s in joined.stores)})")
    if steps is None:
        if tokens_total is not None and tokens_total < batch_size:
            raise ClipsaeError(f"--tokens-total {tokens_total:g} is less than one batch of {batch_size}")
        wanted = train_rows if tokens_total is None else tokens_total
        steps = math.ceil(wanted / batch_size)
        if tokens_total is not None and steps * batch_size != tokens_total:
            notes.append(f"--tokens-total {tokens_total:g} rounded up to {steps} whole batches: {steps * batch_size:,} tokens")
    if run.snapshot_every and run.snapshot_every < batch_size:
        raise ClipsaeError(f"--snapshot-every {run.snapshot_every:g} is less than one batch of {batch_size} tokens: it would "
                           f"export every SAE at every one of the {steps:,} steps; give a number of tokens of at least "
                           f"{batch_size} (e.g. 1e8)")
    if run.snapshot_every and run.snapshot_every > steps * batch_size:
        notes.append(f"--snapshot-every {run.snapshot_every:g} is more than the run's {steps * batch_size:,} tokens: no snapshot "
                     f"will be written")
    elif run.snapshot_every:
        notes.append(f"--snapshot-every {run.snapshot_every:g}: {steps * batch_size // int(run.snapshot_every):,} snapshots "
                     f"of each SAE under snapshots/")
    if run.holdout == 0:
        notes.append("--holdout 0: no image is held out, so there is no held-out evaluation and no held-out metrics")
    dev = resolve_device(req.device)
    settings = {f.name: getattr(run, f.name) for f in fields(RunSettings)}
    settings["precision"] = run.precision or ("bf16" if dev.type == "cuda" else "fp32")
    settings["snapshot_every"] = int(run.snapshot_every)
    default_out = (f"universal-{'-'.join(h for h in joined.hooks)}-{tokens}" if joined is not None
                   else f"{st.path.name.removesuffix('.zarr')}-{hook}-{tokens}")
    out = req.out if req.out is not None else Path("runs") / default_out
    specs = [archs.get(spec.arch).fit_rows(spec, train_rows) for spec in specs]
    cfg = TrainConfig(**settings, store=st.path, store_images=st.n_images, hook=hook, tokens=tokens, out=Path(out),
                      saes=tuple(specs), steps=steps, device=str(dev), extra=extra)
    for spec in specs:
        archs.get(spec.arch).check_run(spec, steps, batch_size)
    if steps < MEANINGFUL_STEPS:
        notes.append(f"{steps} steps is too short to mean anything: SAEs are trained for 10^4-10^5 steps (this run's "
                     f"learning rate warms up over its first {cfg.warmup:,}, a tenth of it at most); use --steps "
                     f"{MEANINGFUL_STEPS:,} or more (with {train_rows:,} training rows, "
                     f"{math.ceil(MEANINGFUL_STEPS * batch_size / train_rows):,} passes over them at --batch-size "
                     f"{batch_size}), or a bigger store")
    return TrainingPlan(cfg, st, held, notes)


def _universal(req: TrainRequest):
    """The stores of ``--universal``, checked: the options it replaces are refused, each hook exists, keys shared."""
    from clipsae.train.universal_data import UniversalData, parse_grid, parse_universal

    if req.store is not None:
        raise ClipsaeError("give --store or --universal, not both: --universal names every model's store and hook")
    if req.hook is not None:
        raise ClipsaeError("--universal names each store's hook (STORE:HOOK); leave --hook out")
    wrong = [a for a in parse_list(str, req.arch, "--arch") if a not in UNIVERSAL_ARCHS]
    if wrong:
        raise ClipsaeError(f"--universal trains {', '.join(UNIVERSAL_ARCHS)} SAEs, not {', '.join(wrong)}")
    if req.sweep is not None:
        raise ClipsaeError("--universal takes its SAEs from the comma lists (--arch, --k, --expansion), not --sweep")
    return UniversalData.open(parse_universal(req.universal), req.tokens,
                              grid=parse_grid(req.grid) if req.grid is not None else None)


def _universal_spec(spec: SAESpec, blocks: tuple[int, ...], selection: str) -> SAESpec:
    """``spec`` as a universal SAE over models of widths ``blocks`` (its expansion counts the widest)."""
    from clipsae.train.universal import SELECTIONS

    if selection not in SELECTIONS:
        raise ClipsaeError(f"--selection {selection!r} is not one of {', '.join(SELECTIONS)}")
    spec = replace(spec, blocks=blocks, selection=selection)
    if not 1 <= spec.k < spec.d_sae:
        raise ClipsaeError(f"--k {spec.k} must be between 1 and the number of latents minus one ({spec.d_sae - 1})")
    return spec
