"""``clipsae encode --slurm-array N``: create the codes group once, record the plan, submit N array tasks."""

import time

import torch

from clipsae.analysis.encode import EncodeConfig, open_encode, run_encode
from clipsae.slurm import SlurmConfig, Submitted, check_array, submit_workers
from clipsae.store.plan import record_plan
from clipsae.store.reader import ActivationStore


def submit_encode(cfg: EncodeConfig, slurm: SlurmConfig, n_tasks: int) -> Submitted:
    """Check store and SAE, create the codes group, record the plan, and submit the array."""
    check_array(slurm, cfg, n_tasks, len(ActivationStore.open(cfg.store).parts), "store parts")
    opened = open_encode(cfg, torch.device("cpu"))
    record_plan(opened.path, {"command": "encode", "n_tasks": n_tasks, "logs": str(slurm.logs), "time": time.time()})
    return submit_workers(slurm, "clipsae-encode", cfg, n_tasks, run_encode)
