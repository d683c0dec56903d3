"""``clipsae train`` and ``clipsae sae info``: the edge where training options are checked."""

import itertools
import json
import math
from pathlib import Path

import click

from clipsae.errors import ClipsaeError
from clipsae.train.config import DEFAULT_BATCH, DEFAULT_DEAD_TOKENS, DEFAULT_WARMUP, TrainConfig
from clipsae.train.spec import ARCHS, SAESpec


def _list(kind, text: str, name: str) -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ClipsaeError(f"{name} must be a comma-separated list of {kind.__name__}s, not {text!r}") from None
    if not values:
        raise ClipsaeError(f"{name} is empty")
    return values


def _specs(archs, expansions, ks, l1s, d: int, weighting: str, aux_alpha: float) -> tuple[SAESpec, ...]:
    specs = []
    for arch, e, k, l1 in itertools.product(archs, expansions, ks, l1s):
        if arch not in ARCHS:
            raise ClipsaeError(f"--arch {arch!r} is not one of {', '.join(ARCHS)}")
        if e < 1:
            raise ClipsaeError(f"--expansion must be at least 1, not {e}")
        if arch != "relu" and not 1 <= k < e * d:
            raise ClipsaeError(f"--k {k} must be between 1 and the number of latents minus one ({e * d - 1} for expansion {e}, d={d})")
        if l1 < 0:
            raise ClipsaeError(f"--l1 must be non-negative, not {l1}")
        spec = SAESpec(arch, d, e, k=k if arch != "relu" else 0, l1=l1 if arch == "relu" else 0.0,
                       aux_alpha=aux_alpha, matryoshka_weighting=weighting)
        if spec not in specs:
            specs.append(spec)
    return tuple(specs)


def _sweep_specs(path: Path, defaults: dict, d: int, weighting: str, aux_alpha: float) -> tuple[SAESpec, ...]:
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ClipsaeError(f"--sweep {path}: cannot read a JSON list of SAEs ({exc})") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ClipsaeError(f"--sweep {path} must hold a non-empty JSON list of objects")
    specs: list[SAESpec] = []
    for e in entries:
        unknown = set(e) - set(defaults)
        if unknown:
            raise ClipsaeError(f"--sweep {path}: unknown keys {sorted(unknown)}; use {', '.join(defaults)}")
        v = {**defaults, **{k: str(x) for k, x in e.items()}}
        for spec in _specs(_list(str, v["arch"], "arch"), _list(int, v["expansion"], "expansion"),
                           _list(int, v["k"], "k"), _list(float, v["l1"], "l1"), d, weighting, aux_alpha):
            if spec not in specs:
                specs.append(spec)
    return tuple(specs)


@click.command("train")
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path), help="Activation store from `clipsae extract`.")
@click.option("--hook", default=None, help="Hook to train on; may be left out when the store has one hook.")
@click.option("--tokens", type=click.Choice(["cls", "patches", "all"]), default="all", show_default=True,
              help="Which stored tokens become training rows.")
@click.option("--arch", default="topk", show_default=True, help="relu, topk, batchtopk or matryoshka; a comma list sweeps.")
@click.option("--expansion", default="16", show_default=True, help="Latents per input dimension; a comma list sweeps.")
@click.option("--k", "k_list", default="32", show_default=True, help="Active latents per token (TopK family); a comma list sweeps.")
@click.option("--l1", default="5", show_default=True, help="L1 coefficient λ of the relu SAE; a comma list sweeps.")
@click.option("--sweep", "sweep_file", type=click.Path(path_type=Path), default=None,
              help="JSON list of SAEs, e.g. [{\"arch\": \"topk\", \"k\": 32}, {\"arch\": \"relu\", \"l1\": 5}]; "
                   "missing keys take the options' values.")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 2e-4/√(n/2^14)].")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH, show_default=True, help="Tokens per step.")
@click.option("--tokens-total", type=float, default=None, help="Training tokens [default: one pass over the training rows].")
@click.option("--steps", type=int, default=None, help="Training steps (instead of --tokens-total).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cuda, cuda:N, cpu, or auto (cuda when there is one).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="Encoder matmul precision; weights stay fp32 [default: bf16 on CUDA, fp32 on CPU].")
@click.option("--holdout", type=float, default=0.01, show_default=True, help="Fraction of images held out for evaluation.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory [default: runs/<store>-<hook>-<tokens>].")
@click.option("--warmup-steps", type=int, default=DEFAULT_WARMUP, show_default=True, help="Linear warm-up (at most a tenth of the run).")
@click.option("--dead-tokens", type=int, default=DEFAULT_DEAD_TOKENS, show_default=True,
              help="A latent silent this many tokens is dead (capped at a tenth of the run).")
@click.option("--aux-alpha", type=float, default=1 / 32, show_default=True, help="AuxK loss weight α.")
@click.option("--matryoshka-weighting", type=click.Choice(["uw", "rw"]), default="uw", show_default=True)
@click.option("--resample-every", type=int, default=0, show_default=True, help="relu: resample dead latents every N steps (0: never).")
@click.option("--buffer-rows", type=int, default=2**18, show_default=True, help="Shuffle buffer size in rows.")
@click.option("--loader-threads", type=int, default=2, show_default=True)
@click.option("--eval-every", type=int, default=0, help="Held-out evaluation every N steps [default: 10 per run].")
@click.option("--eval-rows", type=int, default=2**16, show_default=True, help="Held-out rows used for evaluation.")
@click.option("--checkpoint-every", type=int, default=0, help="Also checkpoint every N steps (0: by time only).")
@click.option("--checkpoint-minutes", type=float, default=10.0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's].")
@click.option("--wandb", "wandb_project", default=None, help="Also log to this wandb project (WANDB_MODE=offline works).")
@click.option("--quiet", is_flag=True, help="No progress bar or progress messages.")
def train_cmd(store_path, hook, tokens, arch, expansion, k_list, l1, sweep_file, lr, batch_size, tokens_total, steps, seed, device,
              precision, holdout, out, warmup_steps, dead_tokens, aux_alpha, matryoshka_weighting, resample_every, buffer_rows,
              loader_threads, eval_every, eval_rows, checkpoint_every, checkpoint_minutes, threads, wandb_project, quiet):
    """Train sparse autoencoders on one hook of an activation store (several at once on a sweep)."""
    import torch

    from clipsae.device import resolve_device
    from clipsae.store.reader import ActivationStore
    from clipsae.train.data import holdout_mask
    from clipsae.train.trainer import run_train

    store = ActivationStore.open(store_path)
    if hook is None:
        if len(store.hooks) != 1:
            raise ClipsaeError(f"{store_path} has hooks {', '.join(store.hooks)}; choose one with --hook")
        hook = store.hooks[0]
    d = store.d(hook)
    token_idx = store.token_indices(hook, tokens)
    if store.n_images == 0:
        raise ClipsaeError(f"{store_path} holds no complete images; run `clipsae extract` first")
    if not 0 <= holdout < 1:
        raise ClipsaeError(f"--holdout must be in [0, 1), not {holdout}")
    for name, value in (("--batch-size", batch_size), ("--buffer-rows", buffer_rows), ("--loader-threads", loader_threads),
                        ("--eval-rows", eval_rows), ("--warmup-steps", warmup_steps), ("--dead-tokens", dead_tokens)):
        if value < 1:
            raise ClipsaeError(f"{name} must be at least 1, not {value}")
    for name, value in (("--eval-every", eval_every), ("--checkpoint-every", checkpoint_every),
                        ("--resample-every", resample_every), ("--aux-alpha", aux_alpha)):
        if value < 0:
            raise ClipsaeError(f"{name} must be at least 0, not {value}")
    if not checkpoint_minutes > 0:
        raise ClipsaeError(f"--checkpoint-minutes must be positive, not {checkpoint_minutes}")
    if lr is not None and not lr > 0:
        raise ClipsaeError(f"--lr must be positive, not {lr}")
    if sweep_file is None:
        specs = _specs(_list(str, arch, "--arch"), _list(int, expansion, "--expansion"), _list(int, k_list, "--k"),
                       _list(float, l1, "--l1"), d, matryoshka_weighting, aux_alpha)
    else:
        specs = _sweep_specs(sweep_file, {"arch": arch, "expansion": expansion, "k": k_list, "l1": l1}, d,
                             matryoshka_weighting, aux_alpha)
    if steps is not None and tokens_total is not None:
        raise ClipsaeError("give --steps or --tokens-total, not both")
    held = holdout_mask(store.keys(), holdout, seed)
    if steps is None:
        if tokens_total is None:
            tokens_total = int((~held).sum()) * len(token_idx)
        steps = math.ceil(tokens_total / batch_size)
    if steps < 1:
        raise ClipsaeError(f"the run must have at least one step (--steps {steps})")
    if threads:
        torch.set_num_threads(threads)
    out = out or Path("runs") / f"{Path(store_path).name.removesuffix('.zarr')}-{hook}-{tokens}"
    dev = resolve_device(device)
    precision = precision or ("bf16" if dev.type == "cuda" else "fp32")
    cfg = TrainConfig(store=store_path, store_images=store.n_images, hook=hook, tokens=tokens, out=out, saes=specs,
                      steps=steps, batch_size=batch_size,
                      lr=lr, seed=seed, device=str(dev), precision=precision, holdout=holdout, warmup_steps=warmup_steps,
                      dead_tokens=dead_tokens, resample_every=resample_every, buffer_rows=buffer_rows,
                      loader_threads=loader_threads, eval_every=eval_every, eval_rows=eval_rows,
                      checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes, wandb_project=wandb_project)
    if not quiet:
        click.echo(f"training {len(specs)} SAE(s) on {hook} ({tokens} tokens, d={d}) for {steps} steps of {batch_size} → {out}", err=True)
    result = run_train(cfg, quiet=quiet, store=store, held=held)
    if result.already_done:
        click.echo(f"{out}: already trained ({result.resumed_from} steps); nothing to do")
    elif result.resumed_from and not quiet:
        click.echo(f"resumed from step {result.resumed_from}", err=True)
    if result.throughput and not quiet:
        t = result.throughput
        click.echo(f"trainer {t['train_tokens_per_s']:,.0f} tokens/s; loader {t['loader_rows_per_s']:,.0f} rows/s; "
                   f"the trainer waited for data {100 * t['wait_fraction']:.0f}% of the time", err=True)
    for label, path in result.dirs.items():
        m = result.metrics.get(label, {})
        if "fvu" in m:
            click.echo(f"{label}: FVU {m['fvu']:.4f}  cosine {m['cosine']:.4f}  L0 {m['l0']:.1f}  "
                       f"dead {m['dead']}  dense {m['dense']}  → {path}")
        else:
            click.echo(f"{label} → {path}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@click.group("sae")
def sae_group():
    """Inspect trained SAEs."""


@sae_group.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def sae_info_cmd(path, as_json):
    """What the SAE in PATH is, and its held-out metrics."""
    from clipsae.train.load import load_metrics, load_sae

    model = load_sae(path)
    metrics = load_metrics(path) or {}
    cfg = model.cfg
    ours = cfg.get("clipsae", {})
    info = {
        "path": str(path), "architecture": model.architecture, "d_in": model.d_in, "d_sae": model.d_sae,
        "k": model.k, "threshold": float(model.threshold.max()) if model.architecture == "jumprelu" else None,
        "trained_as": ours.get("spec", {}).get("arch"), "model": cfg.get("meta", {}).get("model_name"),
        "hook": cfg.get("meta", {}).get("hook_name"), "tokens": ours.get("tokens"), "store": cfg.get("meta", {}).get("dataset_path"),
        "steps": ours.get("steps"), "tokens_trained": ours.get("tokens_trained"), "input_scale": ours.get("scale"),
        "heldout": {k: v for k, v in metrics.items() if k not in ("density_hist", "sae", "split")},
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key != "heldout" and value is not None:
            click.echo(f"{key:>15}: {_fmt(value)}")
    if info["heldout"]:
        click.echo("held-out metrics:")
        for key, value in info["heldout"].items():
            click.echo(f"{key:>22}: {_fmt(value)}")
    else:
        click.echo("no held-out metrics (trained with --holdout 0, or not by clipsae)")
