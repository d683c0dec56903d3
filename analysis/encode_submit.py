"""``clipsae encode --slurm-array N``: create the codes group once, record the plan, submit N array tasks."""

import time

import torch

from clipsae.analysis.encode import EncodeConfig, open_encode, run_encode
from clipsae.slurm import SlurmConfig, Submitted, check_array, submit_workers
from clipsae.store import zarr_backend as zb
from clipsae.store.codes import codes_dir
from clipsae.store.plan import submit_with_plan
from clipsae.store.reader import ActivationStore


def submit_encode(cfg: EncodeConfig, slurm: SlurmConfig, n_tasks: int) -> tuple[Submitted, str | None]:
    """Check store and SAE, create the codes group, record the plan, and submit the array; with the
    warning the choice of hook gave, if any."""
    check_array(slurm, cfg, n_tasks, len(ActivationStore.open(cfg.store).parts), "store parts")
    made_here = not zb.is_node(codes_dir(cfg.store, cfg.codes_name))
    opened = open_encode(cfg, torch.device("cpu"))
    job = submit_with_plan(opened.path, made_here, lambda: submit_workers(slurm, "clipsae-encode", cfg, n_tasks, run_encode),
                           {"command": "encode", "time": time.time()})
    return job, opened.warning
