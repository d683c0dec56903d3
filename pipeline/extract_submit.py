"""``clipsae extract --slurm-array N``: create the store once, record the plan, submit N array tasks."""

import time
from dataclasses import dataclass, replace

from clipsae.errors import ClipsaeError
from clipsae.pipeline.config import ExtractConfig
from clipsae.pipeline.shards import expand_shards
from clipsae.slurm import SlurmConfig, Submitted, check_can_submit, submit_array
from clipsae.store.plan import record_plan


@dataclass(frozen=True)
class ExtractTask:
    """One array task: ``clipsae extract`` with this task's ``--worker-index`` (pickled by submitit)."""

    cfg: ExtractConfig

    def __call__(self) -> str:
        from clipsae.pipeline.extract import run_extract

        line = run_extract(self.cfg).summary(self.cfg.store)
        print(line, flush=True)
        return line


def submit_extract(cfg: ExtractConfig, slurm: SlurmConfig, n_tasks: int) -> Submitted:
    """Create the store's root, record which tars each task owns, and submit the array."""
    from clipsae.pipeline.extract import create_store

    check_can_submit(slurm)
    if n_tasks < 1:
        raise ClipsaeError(f"--slurm-array must be at least 1, got {n_tasks}")
    if cfg.num_workers is not None or cfg.worker_index is not None:
        raise ClipsaeError("--slurm-array sets each task's --num-workers and --worker-index; leave them out")
    n_tars = len(expand_shards(cfg.shards))
    if n_tasks > n_tars:
        raise ClipsaeError(f"--slurm-array {n_tasks} is more tasks than the {n_tars} tars; use at most {n_tars}")
    shards = create_store(cfg)
    record_plan(cfg.store, {"command": "extract", "n_tasks": n_tasks, "logs": str(slurm.logs), "time": time.time(),
                            "parts": [s.part for s in shards], "sources": [s.path for s in shards]})
    # Each task shows its progress through `clipsae status`, not a bar redrawn into its log.
    tasks = [ExtractTask(replace(cfg, num_workers=n_tasks, worker_index=i, progress=False)) for i in range(n_tasks)]
    return submit_array(slurm, "clipsae-extract", tasks)
