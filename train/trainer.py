"""``clipsae train``: several SAEs trained on the same shuffled batches, checkpointed, resumable."""

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore
from clipsae.store.writer import config_differences
from clipsae.train.checkpoint import load_checkpoint, save_checkpoint
from clipsae.train.config import TrainConfig
from clipsae.train.data import RowSource, ShuffleStream, holdout_mask
from clipsae.train.export import save_sae, to_inference
from clipsae.train.load import CFG_FILE
from clipsae.train.metrics import evaluate, plot_density
from clipsae.train.sae import TrainingSAE, geometric_median, optimise, resample_dead

RUN_FILE = "run.json"
METRICS_LOG = "metrics.jsonl"
GM_ROWS = 2**14


@dataclass
class TrainResult:
    """Where each SAE went and its final held-out metrics (empty without a holdout)."""

    dirs: dict[str, Path]
    metrics: dict[str, dict]
    resumed_from: int
    already_done: bool
    throughput: dict | None = None  # this session's tokens/s, loader rows/s, loader-wait share


def check_out_dir(cfg: TrainConfig) -> None:
    """Refuse an ``--out`` that holds another run or something that is not a run at all."""
    run = cfg.out / RUN_FILE
    if run.is_file():
        try:
            existing = json.loads(run.read_text())["identity"]
        except (ValueError, KeyError):
            raise ClipsaeError(f"{run} is unreadable; move {cfg.out} away or choose another --out") from None
        diffs = config_differences(existing, cfg.identity(), have="it has", want="this command has")
        if diffs:
            raise ClipsaeError(f"--out {cfg.out} holds a different run ({'; '.join(diffs)}); choose another --out")
    elif cfg.out.exists() and (not cfg.out.is_dir() or any(cfg.out.iterdir())):
        raise ClipsaeError(f"--out {cfg.out} exists and is not a clipsae run directory")


def input_statistics(source: RowSource, max_rows: int, seed: int) -> tuple[float, torch.Tensor]:
    """(s, geometric median of s·x): s = √d / E‖x‖ over up to ``max_rows`` training rows."""
    rng = np.random.default_rng(seed)
    total, count, keep = 0.0, 0, []
    for chunk_rows in source.iter_sample(seed):
        rows = torch.from_numpy(chunk_rows).float()
        if not len(rows):
            continue
        norms = rows.norm(dim=1)
        if not torch.isfinite(norms).all():
            raise ClipsaeError(f"hook {source.hook} has non-finite activations (see `clipsae store info`); cannot train")
        total += float(norms.double().sum())
        count += len(rows)
        keep.append(rows[torch.from_numpy(rng.permutation(len(rows))[: GM_ROWS // 8])])
        if count >= max_rows:
            break
    mean_norm = total / count
    if not mean_norm > 0:
        raise ClipsaeError(f"hook {source.hook} is all zeros; nothing to train on")
    scale = math.sqrt(source.d) / mean_norm
    sample = torch.cat(keep)[:GM_ROWS] * scale
    return scale, geometric_median(sample)


def _seed_of(seed: int, label: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{label}".encode(), digest_size=7).digest(), "little")


class Run:
    """The state of one training run: stream, SAEs, optimisers, held-out rows, logs."""

    def __init__(self, cfg: TrainConfig, store: ActivationStore, held: np.ndarray | None = None):
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        token_idx = store.token_indices(cfg.hook, cfg.tokens)
        held = holdout_mask(store.keys(), cfg.holdout, cfg.seed) if held is None else held
        self.train_source = RowSource(store, cfg.hook, token_idx, ~held)
        self.heldout_source = RowSource(store, cfg.hook, token_idx, held)
        self.store = store
        self.stream = ShuffleStream(self.train_source, cfg.batch_size, cfg.buffer_rows, cfg.seed, cfg.loader_threads)
        # Each SAE's initialisation depends on the seed and its own settings only, so an SAE
        # trained alone equals the same SAE trained inside a sweep.
        self.saes = [TrainingSAE(spec, torch.Generator().manual_seed(_seed_of(cfg.seed, spec.label)),
                                 bf16_matmul=cfg.precision == "bf16").to(self.device)
                     for spec in cfg.saes]
        self.opts = [torch.optim.Adam(s.parameters(), lr=cfg.lr_of(s.spec), betas=(0.9, 0.999)) for s in self.saes]
        self.resample_gen = torch.Generator().manual_seed(cfg.seed + 17)
        self.scale = 1.0
        self.step = 0
        self.log_path = cfg.out / METRICS_LOG
        self.wandb = None

    def dead_after(self) -> int:
        """Tokens without firing after which a latent counts as dead, scaled down for short runs."""
        return min(self.cfg.dead_tokens, max(self.cfg.batch_size, self.cfg.steps * self.cfg.batch_size // 10))

    def initialise(self) -> None:
        scale, median = input_statistics(self.train_source, self.cfg.scale_rows, self.cfg.seed)
        self.scale = scale
        with torch.no_grad():
            for sae in self.saes:
                sae.b_dec.copy_(median.to(self.device))

    def state(self) -> dict:
        for sae in self.saes:
            for p in sae.parameters():
                if not torch.isfinite(p).all():
                    raise self._nonfinite(sae, "its weights")
        return {
            "step": self.step, "scale": self.scale,
            "saes": [s.state_dict() for s in self.saes], "opts": [o.state_dict() for o in self.opts],
            "stream": self.stream.state_dict(), "resample_rng": self.resample_gen.get_state(),
            "metrics_bytes": self.log_path.stat().st_size if self.log_path.exists() else 0,
        }

    def restore(self, ckpt: dict) -> None:
        self.step, self.scale = int(ckpt["step"]), float(ckpt["scale"])
        for sae, opt, s, o in zip(self.saes, self.opts, ckpt["saes"], ckpt["opts"]):
            sae.load_state_dict(s)
            opt.load_state_dict(o)
        self.stream.load_state_dict(ckpt["stream"])
        self.resample_gen.set_state(ckpt["resample_rng"])
        # Lines logged after the checkpoint will be logged again: drop them so nothing appears twice.
        if self.log_path.exists():
            with open(self.log_path, "r+b") as fh:
                fh.truncate(int(ckpt["metrics_bytes"]))

    def checkpoint(self) -> None:
        save_checkpoint(self.cfg.out, self.state())

    def _nonfinite(self, sae: TrainingSAE, what: str) -> ClipsaeError:
        return ClipsaeError(
            f"{what} of SAE {sae.spec.label} became non-finite at step {self.step}; stopped. "
            f"The last good checkpoint is kept in {self.cfg.out}; lower --lr or check the store with `clipsae store verify`"
        )

    def log(self, record: dict) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({f"{record.get('sae', 'run')}/{record['split']}/{k}": v for k, v in record.items()
                            if isinstance(v, (int, float))}, step=record["step"])

    def train_step(self, x: torch.Tensor, sums: list[dict]) -> None:
        cfg = self.cfg
        dead_limit = self.dead_after()
        for sae, opt, acc in zip(self.saes, self.opts, sums):
            lr = cfg.lr_of(sae.spec) * cfg.lr_factor(self.step)
            for g in opt.param_groups:
                g["lr"] = lr
            dead = sae.tokens_since_fired >= dead_limit if sae.spec.sparse else None
            out = optimise(sae, opt, x, dead, cfg.clip)
            loss = float(out.loss)
            if not math.isfinite(loss):
                raise self._nonfinite(sae, "the loss")
            if cfg.resample_every and sae.spec.arch == "relu" and (self.step + 1) % cfg.resample_every == 0 \
                    and self.step + 1 <= cfg.steps // 2:
                window = sae.tokens_since_fired >= min(dead_limit, cfg.resample_every * len(x))
                acc["resampled"] = acc.get("resampled", 0) + resample_dead(sae, x, window, self.resample_gen, opt)
            for key, v in (("loss", loss), ("mse", float(out.mse)), ("l0", out.l0), ("aux", out.aux), ("lr", lr)):
                acc[key] = acc.get(key, 0.0) + v
            acc["n"] = acc.get("n", 0) + 1

    def evaluate(self, x_eval: torch.Tensor | None, final: bool = False) -> dict[str, dict]:
        results = {}
        for sae in self.saes:
            dead = int((sae.tokens_since_fired >= self.dead_after()).sum())
            record = {"step": self.step, "tokens": self.step * self.cfg.batch_size, "sae": sae.spec.label,
                      "split": "heldout", "dead": dead, "dead_fraction": dead / sae.spec.n}
            if x_eval is not None and len(x_eval):
                metrics, density = evaluate(to_inference(sae, self.scale).to(self.device), x_eval)
                record.update(metrics)
                if final:
                    record["_density"] = density
            results[sae.spec.label] = record
            self.log({k: v for k, v in record.items() if not k.startswith("_")})
        return results


def _heldout_rows(run: Run) -> torch.Tensor | None:
    src = run.heldout_source
    if src.n_rows == 0:
        return None
    return torch.from_numpy(src.sample(run.cfg.eval_rows, run.cfg.seed + 1)).float().to(run.device)


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True).float()
    return batch.float()


def _init_wandb(cfg: TrainConfig):
    if not cfg.wandb_project:
        return None
    try:
        import wandb
    except ImportError:
        raise ClipsaeError("--wandb needs the wandb package: pip install wandb (WANDB_MODE=offline works without network)") from None
    run_id = hashlib.sha1(str(cfg.out.resolve()).encode()).hexdigest()[:12]
    wandb.init(project=cfg.wandb_project, name=cfg.out.name, id=run_id, resume="allow", config=cfg.identity())
    return wandb


def _finalize(run: Run, x_eval: torch.Tensor | None) -> tuple[dict[str, Path], dict[str, dict]]:
    """Final evaluation and export of every SAE: (directory, held-out metrics) by label."""
    cfg, store = run.cfg, run.store
    results = run.evaluate(x_eval, final=True)
    dirs, metrics = {}, {}
    for sae in run.saes:
        label = sae.spec.label
        out = cfg.sae_dir(sae.spec)
        rec = results[label]
        density = rec.pop("_density", None)
        model = to_inference(sae, run.scale)
        cfg_extra = {
            "meta": {"model_name": store.config.get("model"), "hook_name": cfg.hook,
                     "dataset_path": str(Path(cfg.store).resolve()), "context_size": len(run.train_source.token_idx)},
            "clipsae": {"spec": sae.spec.to_json(), "label": label, "scale": run.scale, "hook": cfg.hook,
                        "tokens": cfg.tokens, "model": store.config.get("model"),
                        "pretrained": store.config.get("pretrained"), "steps": cfg.steps,
                        "tokens_trained": cfg.steps * cfg.batch_size, "seed": cfg.seed, "holdout": cfg.holdout,
                        "lr": cfg.lr_of(sae.spec), "batch_size": cfg.batch_size},
        }
        log10 = None if density is None else torch.log10(density + 1e-10)
        save_sae(model, out, cfg_extra, log10, rec)
        if density is not None:
            plot_density(density, out / "density.png", f"{label} on {cfg.hook} ({cfg.tokens} tokens)")
        dirs[label], metrics[label] = out, rec
    return dirs, metrics


def run_train(cfg: TrainConfig, quiet: bool = False, store: ActivationStore | None = None,
              held: np.ndarray | None = None) -> TrainResult:
    """Train every SAE of ``cfg`` to ``cfg.steps``, resuming from ``cfg.out``'s checkpoint if any.

    ``store`` (``cfg.store`` opened) and ``held`` (its holdout mask) save the caller's work twice.
    """
    store = store or ActivationStore.open(cfg.store)
    if store.n_images == 0:
        raise ClipsaeError(f"{cfg.store} holds no complete images; run `clipsae extract` first")
    check_out_dir(cfg)
    run = Run(cfg, store, held)
    ckpt = load_checkpoint(cfg.out)
    if ckpt is not None and ckpt["step"] >= cfg.steps and all((cfg.sae_dir(s) / CFG_FILE).is_file() for s in cfg.saes):
        return TrainResult({s.label: cfg.sae_dir(s) for s in cfg.saes}, {}, int(ckpt["step"]), True)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if ckpt is None:
        (cfg.out / RUN_FILE).write_text(json.dumps({"identity": cfg.identity()}, indent=2))
        run.initialise()
        run.checkpoint()
        resumed_from = 0
    else:
        run.restore(ckpt)
        resumed_from = run.step
    run.wandb = _init_wandb(cfg)
    x_eval = _heldout_rows(run)
    eval_every = cfg.eval_every or max(1, cfg.steps // 10)
    last_ckpt = time.monotonic()
    sums = [{} for _ in run.saes]
    last_eval: dict = {}
    B = cfg.batch_size
    bar = tqdm(total=cfg.steps * B, initial=run.step * B, unit="tok", unit_scale=True, desc="train",
               disable=quiet, dynamic_ncols=True, smoothing=0.05)
    t_loop = time.perf_counter()
    first_step = run.step
    wait = 0.0
    throughput: dict = {}
    try:
        while run.step < cfg.steps:
            x = _to_device(run.stream.next_batch(), run.device) * run.scale
            run.train_step(x, sums)
            run.step += 1
            bar.update(B)
            if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                elapsed = max(time.perf_counter() - t_loop, 1e-9)
                wait = run.stream.wait_s / elapsed
                throughput = {"train_tokens_per_s": (run.step - first_step) * B / elapsed,
                              "loader_rows_per_s": run.stream.loader_rows_per_s(), "wait_fraction": wait}
                for sae, acc in zip(run.saes, sums):
                    n = acc.pop("n", 1)
                    run.log({"step": run.step, "tokens": run.step * B, "sae": sae.spec.label, "split": "train",
                             **{k: (v / n if k != "resampled" else v) for k, v in acc.items()}})
                    acc.clear()
                run.log({"step": run.step, "split": "loader", **throughput})
                bar.set_postfix_str(_postfix(last_eval, wait), refresh=False)
            if run.step % eval_every == 0 and run.step < cfg.steps:
                last_eval = run.evaluate(x_eval)
                bar.set_postfix_str(_postfix(last_eval, wait), refresh=False)
            due = cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0
            if due or time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60 or run.step == cfg.steps:
                run.checkpoint()
                last_ckpt = time.monotonic()
    finally:
        bar.close()
        run.stream.close()
    dirs, metrics = _finalize(run, x_eval)
    result = TrainResult(dirs, metrics, resumed_from, False, throughput or None)
    if run.wandb is not None:
        run.wandb.finish()
    return result


def _postfix(last_eval: dict, wait: float) -> str:
    parts = []
    if last_eval:
        rec = next(iter(last_eval.values()))
        if "fvu" in rec:
            parts.append(f"fvu={rec['fvu']:.3f} l0={rec['l0']:.1f}")
        parts.append(f"dead={rec['dead']}")
    parts.append(f"loader-wait={100 * wait:.0f}%" + (" (loader-bound)" if wait > 0.2 else ""))
    return " ".join(parts)
