"""The run directory: its identity (``run.json``), checkpoint, metrics log and each SAE's exported folder."""

import hashlib
import json
from pathlib import Path
from typing import Collection

import torch

from clipsae.errors import ClipsaeError
from clipsae.files import atomic_write, write_json
from clipsae.store.location import absolute
from clipsae.store.parts import config_differences
from clipsae.train.config import TrainConfig
from clipsae.train.export import save_sae, to_inference
from clipsae.train.load import SNAPSHOTS
from clipsae.train.metrics import plot_density

RUN_FILE = "run.json"
METRICS_LOG = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"


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


def write_identity(cfg: TrainConfig) -> None:
    """Record what the run is, so that a rerun into the same directory can be checked against it."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out / RUN_FILE, {"identity": cfg.identity()})


def _save_atomically(path: Path, state: dict) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def save_checkpoint(out: Path, state: dict) -> None:
    """Atomically replace ``out/checkpoint.pt``: a kill leaves the previous one intact."""
    _save_atomically(out / CHECKPOINT_FILE, state)


def _stream_file(out: Path, rank: int, step: int) -> Path:
    return out / f"stream-rank{rank}-step{step}.pt"


def save_stream_state(out: Path, rank: int, step: int, state: dict) -> None:
    """One training process's stream position at ``step`` (several processes: one file each)."""
    _save_atomically(_stream_file(out, rank, step), state)


def load_stream_state(out: Path, rank: int, step: int) -> dict:
    """The stream position process ``rank`` saved at ``step``."""
    path = _stream_file(out, rank, step)
    if not path.is_file():
        raise ClipsaeError(f"{path} is missing: the checkpoint at step {step} cannot be resumed by process {rank}")
    return torch.load(path, map_location="cpu", weights_only=False)


def remove_stream_states(out: Path, rank: int, keep: Collection[int]) -> None:
    """Remove process ``rank``'s positions of steps other than those in ``keep`` (checkpoints' steps)."""
    kept = {_stream_file(out, rank, step) for step in keep}
    for path in out.glob(f"stream-rank{rank}-step*.pt"):
        if path not in kept:
            path.unlink(missing_ok=True)


def load_checkpoint(out: Path) -> dict | None:
    """The last checkpoint written to ``out``, or None."""
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class MetricsLog:
    """``metrics.jsonl``, one JSON record a line, mirrored to wandb when asked."""

    def __init__(self, cfg: TrainConfig, enabled: bool = True):
        self.path = cfg.out / METRICS_LOG
        self.wandb = None
        self._cfg = cfg
        self.enabled = enabled  # one training process of several writes the log

    def start_wandb(self) -> None:
        if not self._cfg.wandb_project or not self.enabled:
            return
        try:
            import wandb
        except ImportError:
            raise ClipsaeError("--wandb needs the wandb package: pip install wandb (WANDB_MODE=offline works without network)") from None
        cfg = self._cfg
        run_id = hashlib.sha1(str(cfg.out.resolve()).encode()).hexdigest()[:12]
        wandb.init(project=cfg.wandb_project, name=cfg.out.name, id=run_id, resume="allow", config=cfg.identity())
        self.wandb = wandb

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({f"{record.get('sae', 'run')}/{record['split']}/{k}": v for k, v in record.items()
                            if isinstance(v, (int, float))}, step=record["step"])

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        """Drop what was logged after a checkpoint, so a resumed run logs nothing twice."""
        if self.enabled and self.path.exists():
            with open(self.path, "r+b") as fh:
                fh.truncate(size)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def snapshot_dir(cfg: TrainConfig, spec, tokens: int) -> Path:
    """Where the snapshot of ``spec``'s SAE after ``tokens`` training tokens goes: the count zero-padded to
    the width of the run's total, so that the folders list in training order."""
    return cfg.sae_dir(spec) / SNAPSHOTS / str(tokens).zfill(len(str(cfg.steps * cfg.batch_size)))


def snapshot_due(cfg: TrainConfig, step: int) -> bool:
    """Whether step ``step`` is the first whose tokens reach the next multiple of ``--snapshot-every``."""
    every, b = cfg.snapshot_every, cfg.batch_size
    return bool(every) and step * b // every > (step - 1) * b // every


def export_sae(cfg: TrainConfig, store_config: dict, sae, scale: float, context_size: int, record: dict,
               density_N: torch.Tensor | None, step: int | None = None) -> Path:
    """Write one trained SAE's folder: SAELens files, held-out metrics and the density histogram.

    With ``step``, the snapshot at that step instead, under ``snapshots/<tokens>``.
    """
    out = cfg.sae_dir(sae.spec) if step is None else snapshot_dir(cfg, sae.spec, step * cfg.batch_size)
    step = cfg.steps if step is None else step
    label = sae.spec.label
    cfg_extra = {
        "meta": {"model_name": store_config.get("model"), "hook_name": cfg.hook,
                 "dataset_path": str(absolute(cfg.store)), "context_size": context_size},
        "clipsae": {"spec": sae.spec.to_json(), "label": label, "scale": scale, "hook": cfg.hook,
                    "tokens": cfg.tokens, "model": store_config.get("model"),
                    "pretrained": store_config.get("pretrained"), "steps": step,
                    "tokens_trained": step * cfg.batch_size, "seed": cfg.seed, "holdout": cfg.holdout,
                    "lr": cfg.lr_of(sae.spec), "batch_size": cfg.batch_size},
    }
    log10 = None if density_N is None else torch.log10(density_N + 1e-10)
    save_sae(to_inference(sae, scale), out, cfg_extra, log10, record)
    if density_N is not None:
        plot_density(density_N, out / "density.png", f"{label} on {cfg.hook} ({cfg.tokens} tokens)")
    return out
