"""The training loop: several SAEs trained on the same shuffled batches, checkpointed, resumable."""

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from clipsae.errors import ClipsaeError
from clipsae.host_sync import declared
from clipsae.memory import keep_freed_memory
from clipsae.store.reader import ActivationStore
from clipsae.train import archs
from clipsae.train.archs.base import StepOutput
from clipsae.train.checkpoint_writer import CheckpointWriter, host_copy
from clipsae.train.config import TrainConfig
from clipsae.train.data import RowSource, ShuffleStream, holdout_mask
from clipsae.train.export import to_inference
from clipsae.train.metrics import evaluate
from clipsae.train.ranks import Ranks, join_ranks, leave_ranks
from clipsae.train.rundir import (
    MetricsLog,
    check_out_dir,
    export_sae,
    load_checkpoint,
    load_stream_state,
    remove_stream_states,
    save_checkpoint,
    save_stream_state,
    snapshot_due,
    write_identity,
)
from clipsae.train.sae import TrainingSAE, optimise
from clipsae.train.statistics import input_statistics
from clipsae.train.universal import evaluate_universal, export_universal, finished_file
from clipsae.train.universal_data import universal_data


@dataclass
class TrainResult:
    """Where each SAE went and its final held-out metrics (empty without a holdout)."""

    dirs: dict[str, Path]
    metrics: dict[str, dict]
    resumed_from: int
    already_done: bool
    throughput: dict | None = None  # this session's tokens/s, loader rows/s, loader-wait share


class TrainingStopped(Exception):
    """Training stopped on request (a preemption signal) right after checkpointing at ``step``."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step} after checkpointing")
        self.step = step


class Run:
    """The state of one training run: stream, SAEs, optimisers, held-out rows, logs.

    With several processes (``ranks``), each holds a Run: the same SAEs and optimisers, its own
    share of the data and of each global batch; process 0 evaluates, logs and writes the files.
    """

    def __init__(self, cfg: TrainConfig, store: ActivationStore, held: np.ndarray | None = None,
                 ranks: Ranks = Ranks()):
        self.cfg = cfg
        self.ranks = ranks
        on_gpu = cfg.device.startswith("cuda") and ranks.world > 1
        self.device = torch.device(f"cuda:{ranks.local_rank}" if on_gpu else cfg.device)
        token_idx = store.token_indices(cfg.hook, cfg.tokens)
        held = holdout_mask(store.keys(), cfg.holdout, cfg.seed) if held is None else held
        self.universal = universal_data(cfg)
        if self.universal is not None:
            self.train_source, self.heldout_source = self.universal.source(~held), self.universal.source(held)
        else:
            self.train_source = RowSource(store, cfg.hook, token_idx, ~held)
            self.heldout_source = RowSource(store, cfg.hook, token_idx, held)
        self.store = store
        self.stream = ShuffleStream(self.train_source, cfg.batch_size // ranks.world, cfg.buffer_rows, cfg.seed,
                                    cfg.loader_threads, rank=ranks.rank, world=ranks.world)
        self.saes = [TrainingSAE(spec, cfg.seed, bf16_matmul=cfg.precision == "bf16").to(self.device)
                     for spec in cfg.saes]
        # Fused: one kernel per step for all parameters, and no read of its step count back to the host.
        self.opts = [torch.optim.Adam(s.parameters(), lr=cfg.lr_of(s.spec), betas=(0.9, 0.999), fused=True)
                     for s in self.saes]
        self.resample_gen = torch.Generator().manual_seed(cfg.seed + 17)
        self.scale = 1.0
        self.step = 0
        self.metrics = MetricsLog(cfg, enabled=ranks.is_main)
        # Per SAE, on the device: the first step whose loss was not finite, −1 while none was.
        self.first_bad = [torch.full((), -1, dtype=torch.int64, device=self.device) for _ in self.saes]
        # Per SAE, the indices of the latents AuxK revives, as of the last logging step (refresh_dead).
        self.dead_cols = [torch.zeros(0, dtype=torch.int64, device=self.device) for _ in self.saes]
        self.writer = CheckpointWriter()
        self.last_checkpoint_step = 0

    def refresh_dead(self) -> None:
        """Which latents are dead now, for AuxK to rank only them until the next logging step."""
        with declared("the dead latents' indices: their count sizes AuxK's ranking; once per logging interval"):
            self.dead_cols = [(s.tokens_since_fired >= self.dead_after()).nonzero().squeeze(1) for s in self.saes]

    def dead_after(self) -> int:
        """Tokens without firing after which a latent counts as dead, scaled down for short runs."""
        return min(self.cfg.dead_tokens, max(self.cfg.batch_size, self.cfg.steps * self.cfg.batch_size // 10))

    def initialise(self) -> None:
        """The input scale and b_dec's initial value (the median), computed once and sent to every process."""
        stats = torch.zeros(1 + self.train_source.d, dtype=torch.float64, device=self.device)
        sample = None
        if self.ranks.is_main:
            scale, median, sample = input_statistics(self.train_source, self.cfg.scale_rows, self.cfg.seed)
            stats[0], stats[1:] = scale, median.to(self.device, torch.float64)
        self.ranks.broadcast_(stats)
        self.scale = float(stats[0])
        with torch.no_grad():
            for sae in self.saes:
                sae.b_dec.copy_(stats[1:].to(sae.b_dec.dtype))
                if sample is not None:
                    sae.arch.initialise(sae, sample.to(self.device), self.cfg.seed)
                for t in sae.state_dict().values():  # what process 0 initialised, on every process
                    self.ranks.broadcast_(t)

    def check_finite(self) -> None:
        """Raise if some SAE's loss was not finite since the start, on any process (one read of the device)."""
        for sae, bad in zip(self.saes, self.ranks.max_(torch.stack(self.first_bad)).tolist()):
            if bad >= 0:
                raise self._nonfinite(sae, "the loss", bad)

    def state(self) -> dict:
        self.check_finite()
        for sae in self.saes:
            for p in sae.parameters():
                if not torch.isfinite(p).all():
                    raise self._nonfinite(sae, "its weights")
        return {
            "step": self.step, "scale": self.scale, "world": self.ranks.world,
            "saes": [s.state_dict() for s in self.saes], "opts": [o.state_dict() for o in self.opts],
            "stream": self.stream.state_dict(), "resample_rng": self.resample_gen.get_state(),
            "metrics_bytes": self.metrics.size(), "dead_cols": [c.cpu() for c in self.dead_cols],
        }

    def restore(self, ckpt: dict) -> None:
        world = int(ckpt.get("world", 1))
        if world != self.ranks.world:
            raise ClipsaeError(
                f"{self.cfg.out} was checkpointed by {world} training process{'es' if world > 1 else ''}, and this "
                f"run has {self.ranks.world}; resume it with the same number (torchrun --nproc-per-node {world}"
                f"{', or plain clipsae train' if world == 1 else ''}): another number would change its batches")
        self.step, self.scale = int(ckpt["step"]), float(ckpt["scale"])
        self.last_checkpoint_step = self.step
        for sae, opt, s, o in zip(self.saes, self.opts, ckpt["saes"], ckpt["opts"]):
            sae.load_state_dict(s)
            opt.load_state_dict(o)
        stream = ckpt["stream"] if world == 1 else load_stream_state(self.cfg.out, self.ranks.rank, self.step)
        self.stream.load_state_dict(stream)
        self.resample_gen.set_state(ckpt["resample_rng"])
        self.metrics.truncate(int(ckpt["metrics_bytes"]))
        if "dead_cols" in ckpt:
            self.dead_cols = [c.to(self.device) for c in ckpt["dead_cols"]]
        else:  # a checkpoint from before the dead set was kept: the set as of now
            self.refresh_dead()

    def checkpoint(self, wait: bool = False) -> None:
        """Checkpoint now: the loop waits for a copy of the state in host memory, and the file is written
        on a background thread (``train/checkpoint_writer.py``) while training goes on; ``wait``: until it is
        on disk (before stopping or finishing). Each checkpoint's record (``split: checkpoint``: ``seconds``
        the loop was held, ``write_seconds`` the write took) is logged once its file is on disk.

        With several processes, each first writes its stream's position for this step; once all
        have, process 0 writes the shared checkpoint, which names the step. Positions are removed only
        once no checkpoint on disk can name them (the last written, or the one being written), so a
        kill at any moment leaves a checkpoint whose positions all exist.
        """
        t = time.perf_counter()
        if self.ranks.is_main:
            self.finish_checkpoints()  # logged before the state is taken, which records the log's length
        state = self.state()
        if self.ranks.world > 1:
            save_stream_state(self.cfg.out, self.ranks.rank, self.step, state.pop("stream"))
            self.ranks.barrier()
        if self.ranks.is_main:
            snapshot = host_copy(state)
            self.writer.submit(lambda: save_checkpoint(self.cfg.out, snapshot), (self.step, time.perf_counter() - t))
            if wait:
                self.finish_checkpoints()
        if self.ranks.world > 1:
            self.ranks.barrier()
            on_disk = [self.step] if wait else [self.step, self.last_checkpoint_step]
            remove_stream_states(self.cfg.out, self.ranks.rank, keep=on_disk)
        self.last_checkpoint_step = self.step

    def _log_written(self, done: tuple | None) -> None:
        if done is not None:
            (step, held), write_seconds = done
            self.metrics.log({"step": step, "split": "checkpoint", "seconds": held, "write_seconds": write_seconds})

    def log_written_checkpoint(self) -> None:
        """Log the checkpoint whose write has finished since, if any, without waiting for one in flight."""
        if self.ranks.is_main and self.writer.done():
            self.finish_checkpoints()

    def finish_checkpoints(self) -> None:
        """Wait for the checkpoint being written, if any, and raise what its write raised."""
        self._log_written(self.writer.wait())

    def finish_checkpoints_failing(self) -> None:
        """As :meth:`finish_checkpoints` while another error is on its way out: that one is reported, and a
        failed write only said (the checkpoint before it is whole)."""
        try:
            self.finish_checkpoints()
        except Exception as e:
            print(f"note: the checkpoint being written failed too ({e}); the one before it is kept", file=sys.stderr,
                  flush=True)

    def agree_any(self, flag: bool, synchronised: bool) -> bool:
        """``flag`` alone; with several processes, whether it holds on any of them, asked only
        where they synchronise anyway (elsewhere False), so that all decide alike without waiting."""
        if self.ranks.world == 1:
            return flag
        if not synchronised:
            return False
        return bool(self.ranks.max_(torch.tensor([int(flag)], device=self.device)).item())

    def mean_over_ranks(self, acc: dict) -> dict:
        """The accumulated metrics averaged over the processes (each holds its share's means)."""
        keys = [k for k in ("loss", "mse", "l0", "aux") if k in acc]
        if self.ranks.world == 1 or not keys:
            return acc
        t = torch.stack([torch.as_tensor(acc[k], dtype=torch.float32, device=self.device) for k in keys])
        t = self.ranks.sum_(t) / self.ranks.world
        return {**acc, **dict(zip(keys, t.unbind()))}

    def _nonfinite(self, sae: TrainingSAE, what: str, step: int | None = None) -> ClipsaeError:
        return ClipsaeError(
            f"{what} of SAE {sae.spec.label} became non-finite at step {self.step if step is None else step}; stopped. "
            f"The last good checkpoint is kept in {self.cfg.out}; lower --lr or check the store with `clipsae store verify`"
        )

    def train_step(self, x: torch.Tensor, sums: list[dict]) -> None:
        cfg = self.cfg
        dead_limit = self.dead_after()
        for i, (sae, opt, acc) in enumerate(zip(self.saes, self.opts, sums)):
            if not sae.arch.trains_by_gradient:
                out = sae.arch.fit_step(sae, x)
                sae.track_firing(out.fired_N, len(x))
                self._accumulate(acc, out)
                continue
            lr = cfg.lr_of(sae.spec) * cfg.lr_factor(self.step)
            for g in opt.param_groups:
                g["lr"] = lr
            dead = self.dead_cols[i] if sae.arch.revives_with_auxk else None
            out = optimise(sae, opt, x, dead, cfg.clip, self.ranks)
            self.first_bad[i] = torch.where((self.first_bad[i] < 0) & ~torch.isfinite(out.loss),
                                            self.step, self.first_bad[i])
            if cfg.resample_every and sae.arch.resamples and (self.step + 1) % cfg.resample_every == 0 \
                    and self.step + 1 <= cfg.steps // 2:
                window = sae.tokens_since_fired >= min(dead_limit, cfg.resample_every * len(x))
                with declared("resampling draws inputs for the dead latents it finds; every --resample-every steps"):
                    acc["resampled"] = acc.get("resampled", 0) + sae.arch.resample(sae, x, window, self.resample_gen, opt)
            self._accumulate(acc, out, ("aux", out.aux), ("lr", lr))

    @staticmethod
    def _accumulate(acc: dict, out: StepOutput, *extra: tuple) -> None:
        """Add a step's logged values to ``acc``: summed on the device, read back once per logging interval."""
        for key, v in (("loss", out.loss), ("mse", out.mse), ("l0", out.l0), *extra):
            acc[key] = acc.get(key, 0.0) + v
        acc["n"] = acc.get("n", 0) + 1

    def evaluate(self, x_eval: torch.Tensor | None, final: bool = False) -> dict[str, dict]:
        """Held-out metrics of every SAE, logged; process 0 alone evaluates, the others return nothing."""
        results = {}
        if not self.ranks.is_main:
            return results
        for sae in self.saes:
            dead = int((sae.tokens_since_fired >= self.dead_after()).sum())
            record = {"step": self.step, "tokens": self.step * self.cfg.batch_size, "sae": sae.spec.label,
                      "split": "heldout", "dead": dead, "dead_fraction": dead / sae.spec.d_sae}
            if x_eval is not None and len(x_eval):
                t = time.perf_counter()
                if sae.spec.blocks:
                    metrics, density, per_model = evaluate_universal(sae, self.scale, self.universal.factors, x_eval,
                                                                     evaluate)
                    record["_densities"] = per_model
                else:
                    metrics, density = evaluate(to_inference(sae, self.scale).to(self.device), x_eval)
                record.update(metrics)
                record["heldout_tokens"] = len(x_eval)
                record["seconds"] = time.perf_counter() - t
                if final:
                    record["_density"] = density
            results[sae.spec.label] = record
            self.metrics.log({k: v for k, v in record.items() if not k.startswith("_")})
            if not final:
                record.pop("_densities", None)
        return results


def _heldout_rows(run: Run) -> torch.Tensor | None:
    src = run.heldout_source
    if src.n_rows == 0 or not run.ranks.is_main:
        return None
    return torch.from_numpy(src.sample(run.cfg.eval_rows, run.cfg.seed + 1)).float().to(run.device)


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True).float()
    return batch.float()


def _finalize(run: Run, x_eval: torch.Tensor | None) -> tuple[dict[str, Path], dict[str, dict]]:
    """Final evaluation and export of every SAE: (directory, held-out metrics) by label."""
    results = run.evaluate(x_eval, final=True)
    dirs, metrics = {}, {}
    if not run.ranks.is_main:
        return {sae.spec.label: run.cfg.sae_dir(sae.spec) for sae in run.saes}, metrics
    for sae in run.saes:
        rec = results[sae.spec.label]
        density = rec.pop("_density", None)
        if sae.spec.blocks:
            dirs[sae.spec.label] = export_universal(run.cfg, run.universal, sae, run.scale, rec)
        else:
            dirs[sae.spec.label] = export_sae(run.cfg, run.store.config, sae, run.scale,
                                              len(run.train_source.token_idx), rec, density)
        metrics[sae.spec.label] = rec
    return dirs, metrics


def _snapshot(run: Run, x_eval: torch.Tensor | None) -> None:
    """Export every SAE as it is now, with its held-out metrics, under ``snapshots/<tokens>``."""
    results = run.evaluate(x_eval)
    if not run.ranks.is_main:
        return
    for sae in run.saes:
        if sae.spec.blocks:
            export_universal(run.cfg, run.universal, sae, run.scale, results[sae.spec.label], step=run.step)
        else:
            export_sae(run.cfg, run.store.config, sae, run.scale, len(run.train_source.token_idx),
                       results[sae.spec.label], None, step=run.step)


def run_train(cfg: TrainConfig, quiet: bool = False, store: ActivationStore | None = None,
              held: np.ndarray | None = None, stop: Callable[[], bool] | None = None,
              notes: Sequence[str] = ()) -> TrainResult:
    """Train every SAE of ``cfg`` to ``cfg.steps``, resuming from ``cfg.out``'s checkpoint if any.

    ``store`` (``cfg.store`` opened) and ``held`` (its holdout mask) save the caller's work twice.
    ``notes`` (the plan's) are printed as ``note: …`` once training is to happen, not for a run already done.
    ``stop`` is asked between steps; once it says yes, the run checkpoints and raises
    :class:`TrainingStopped`, and the same call later resumes exactly there. Started by torchrun,
    the processes train one set of SAEs together (``train/ranks.py``).
    """
    if torch.device(cfg.device).type == "cpu":
        # The step's large temporaries live in host memory only when training on the CPU (docs/sae.md).
        keep_freed_memory()
    ranks = join_ranks(cfg.device)
    try:
        result = _train(cfg, quiet or not ranks.is_main, store, held, stop, ranks, notes if ranks.is_main else ())
    except BaseException:
        # No waiting for the others on the way out: they may be inside a step this process left;
        # torchrun stops them once this process exits.
        leave_ranks(ranks, wait=False)
        raise
    leave_ranks(ranks)
    return result


def _train(cfg: TrainConfig, quiet: bool, store: ActivationStore | None, held: np.ndarray | None,
           stop: Callable[[], bool] | None, ranks: Ranks, notes: Sequence[str] = ()) -> TrainResult:
    store = store or ActivationStore.open(cfg.store)
    if store.n_images == 0:
        raise ClipsaeError(f"{cfg.store} holds no complete images; run `clipsae extract` first")
    if cfg.batch_size % ranks.world:
        raise ClipsaeError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly among the "
                           f"{ranks.world} training processes")
    if cfg.resample_every and ranks.world > 1:
        raise ClipsaeError("--resample-every works in one process only; train relu SAEs with resampling without torchrun")
    baselines = [s.label for s in cfg.saes if not archs.get(s.arch).trains_by_gradient]
    if baselines and ranks.world > 1:
        raise ClipsaeError(f"the baselines {', '.join(baselines)} are fitted in one process; train them without torchrun")
    check_out_dir(cfg)
    ranks.barrier()  # every process has checked the directory before process 0 writes to it
    run = Run(cfg, store, held, ranks)
    ckpt = load_checkpoint(cfg.out)
    if ckpt is not None and ckpt["step"] >= cfg.steps and all((cfg.sae_dir(s) / finished_file(s)).is_file()
                                                               for s in cfg.saes):
        return TrainResult({s.label: cfg.sae_dir(s) for s in cfg.saes}, {}, int(ckpt["step"]), True)
    existed = cfg.out.exists()
    try:
        for note in notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        if ckpt is None:
            if ranks.is_main:
                write_identity(cfg)
            run.initialise()
            run.checkpoint()
            resumed_from = 0
        else:
            run.restore(ckpt)
            resumed_from = run.step
            if ranks.is_main:
                # Said at once, whatever --quiet: a requeued job's log and a rerun's terminal must show it.
                print(f"resumed from step {run.step} of {cfg.steps} (checkpoint in {cfg.out})", file=sys.stderr, flush=True)
        run.metrics.start_wandb()
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
        logged = False
        wait = 0.0
        throughput: dict = {}
        try:
            while run.step < cfg.steps:
                # Processes must agree on when to stop or checkpoint; they compare only at logging
                # steps, where they wait for one another anyway.
                if stop is not None and run.agree_any(stop(), logged):
                    run.checkpoint(wait=True)
                    raise TrainingStopped(run.step)
                x = _to_device(run.stream.next_batch(), run.device) * run.scale
                run.train_step(x, sums)
                run.step += 1
                bar.update(B)
                logged = run.step % cfg.log_every == 0 or run.step == cfg.steps
                if logged:
                    run.refresh_dead()
                    elapsed = max(time.perf_counter() - t_loop, 1e-9)
                    wait = run.stream.wait_s / elapsed
                    throughput = {"train_tokens_per_s": (run.step - first_step) * B / elapsed,
                                  "loader_rows_per_s": run.stream.loader_rows_per_s(), "wait_fraction": wait}
                    run.check_finite()
                    for sae, acc in zip(run.saes, sums):
                        n = acc.pop("n", 1)
                        mean = run.mean_over_ranks(acc)
                        run.metrics.log({"step": run.step, "tokens": run.step * B, "sae": sae.spec.label, "split": "train",
                                 **{k: (float(v) / n if k != "resampled" else v) for k, v in mean.items()}})
                        acc.clear()
                    run.metrics.log({"step": run.step, "split": "loader", **throughput})
                    run.log_written_checkpoint()
                    bar.set_postfix_str(_postfix(last_eval, wait), refresh=False)
                if run.step % eval_every == 0 and run.step < cfg.steps:
                    run.check_finite()
                    last_eval = run.evaluate(x_eval)
                    bar.set_postfix_str(_postfix(last_eval, wait), refresh=False)
                if snapshot_due(cfg, run.step):
                    # Before the checkpoint of this step: a kill between the two retrains to here and
                    # writes the same snapshot again, so none is lost and none doubled.
                    _snapshot(run, x_eval)
                due = cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0
                late = run.agree_any(time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60, logged)
                if due or late or run.step == cfg.steps:
                    run.checkpoint(wait=run.step == cfg.steps)
                    last_ckpt = time.monotonic()
        finally:
            bar.close()
            run.stream.close()
            if sys.exc_info()[0] is not None:
                run.finish_checkpoints_failing()
        dirs, metrics = _finalize(run, x_eval)
        run.metrics.close()
        return TrainResult(dirs, metrics, resumed_from, False, throughput or None)
    except ClipsaeError:
        run.finish_checkpoints_failing()
        if ckpt is None and run.step == 0 and ranks.is_main:
            # A new run that failed before its first step (a damaged store, say) leaves no run behind.
            _remove_unstarted(cfg.out, existed)
        raise


def _remove_unstarted(out: Path, existed: bool) -> None:
    """Remove what a new run wrote into ``out`` (empty or absent before it, as check_out_dir made sure)."""
    import shutil

    if existed:
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        shutil.rmtree(out, ignore_errors=True)


def _postfix(last_eval: dict, wait: float) -> str:
    parts = []
    if last_eval:
        rec = next(iter(last_eval.values()))
        if "fvu" in rec:
            parts.append(f"fvu={rec['fvu']:.3f} l0={rec['l0']:.1f}")
        parts.append(f"dead={rec['dead']}")
    parts.append(f"loader-wait={100 * wait:.0f}%" + (" (loader-bound)" if wait > 0.2 else ""))
    return " ".join(parts)
