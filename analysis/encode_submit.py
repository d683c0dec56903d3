"""``clipsae encode --slurm-array N``: create the codes group once, record the plan, submit N array tasks."""

import time
from dataclasses import dataclass, replace

import torch

from clipsae.analysis.encode import EncodeConfig, open_encode
from clipsae.errors import ClipsaeError
from clipsae.slurm import SlurmConfig, Submitted, check_can_submit, submit_array
from clipsae.store.plan import record_plan
from clipsae.store.reader import ActivationStore


@dataclass(frozen=True)
class EncodeTask:
    """One array task: ``clipsae encode`` with this task's ``--worker-index`` (pickled by submitit)."""

    cfg: EncodeConfig

    def __call__(self) -> str:
        from clipsae.analysis.encode import run_encode

        line = run_encode(self.cfg).summary(self.cfg.store)
        print(line, flush=True)
        return line


def submit_encode(cfg: EncodeConfig, slurm: SlurmConfig, n_tasks: int) -> Submitted:
    """Check store and SAE, create the codes group, record the plan, and submit the array."""
    check_can_submit(slurm)
    if n_tasks < 1:
        raise ClipsaeError(f"--slurm-array must be at least 1, got {n_tasks}")
    if cfg.num_workers is not None or cfg.worker_index is not None:
        raise ClipsaeError("--slurm-array sets each task's --num-workers and --worker-index; leave them out")
    n_parts = len(ActivationStore.open(cfg.store).parts)
    if n_tasks > n_parts:
        raise ClipsaeError(f"--slurm-array {n_tasks} is more tasks than the store's {n_parts} parts; use at most {n_parts}")
    opened = open_encode(cfg, torch.device("cpu"))
    record_plan(opened.path, {"command": "encode", "n_tasks": n_tasks, "logs": str(slurm.logs), "time": time.time()})
    tasks = [EncodeTask(replace(cfg, num_workers=n_tasks, worker_index=i, progress=False)) for i in range(n_tasks)]
    return submit_array(slurm, "clipsae-encode", tasks)
