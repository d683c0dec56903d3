"""How a job finds its share of the work: ``--num-workers``/``--worker-index``, or a Slurm job array."""

import os

from clipsae.errors import ClipsaeError


def worker_slot(num_workers: int | None, worker_index: int | None) -> tuple[int, int]:
    """(count, index) from the options, else from a Slurm job array, else (1, 0)."""
    env = os.environ
    if num_workers is None and "SLURM_ARRAY_TASK_COUNT" in env:
        num_workers = int(env["SLURM_ARRAY_TASK_COUNT"])
        if worker_index is None:
            worker_index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    num_workers = 1 if num_workers is None else num_workers
    worker_index = 0 if worker_index is None else worker_index
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ClipsaeError(f"--worker-index must be in 0..{num_workers - 1}, got {worker_index}")
    return num_workers, worker_index
