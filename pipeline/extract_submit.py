"""``clipsae extract --slurm-array N``: create the store once, record the plan, submit N array tasks."""

import time

from clipsae.pipeline.config import ExtractConfig
from clipsae.pipeline.shards import expand_shards
from clipsae.slurm import SlurmConfig, Submitted, check_array, submit_workers
from clipsae.store import zarr_backend as zb
from clipsae.store.plan import submit_with_plan


def submit_extract(cfg: ExtractConfig, slurm: SlurmConfig, n_tasks: int) -> Submitted:
    """Create the store's root, record which tars each task owns, and submit the array."""
    from clipsae.pipeline.extract import create_store, run_extract

    check_array(slurm, cfg, n_tasks, len(expand_shards(cfg.shards)), "tars")
    made_here = not zb.is_node(cfg.store)
    shards = create_store(cfg)
    return submit_with_plan(cfg.store, made_here, lambda: submit_workers(slurm, "clipsae-extract", cfg, n_tasks, run_extract),
                       {"command": "extract", "time": time.time(), "parts": [s.part for s in shards],
                        "sources": [s.path for s in shards]})
