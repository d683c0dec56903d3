"""The plan of a submitted array: which parts the tasks will write, and the job that writes them.

A store alone knows its complete and unfinished parts; only the plan knows the parts not begun
yet. ``extract --slurm-array`` records it in the store's root and ``encode --slurm-array`` in the
codes group, once sbatch has queued the job, so no task ever writes it.
"""

from pathlib import Path
from typing import Callable

from clipsae.store import zarr_backend as zb
from clipsae.store.location import store_path

PLAN = "plan"


def submit_with_plan(node: str | Path, made_here: bool, submit: Callable, plan: dict):
    """``submit()`` work that writes into the group at ``node``, then record ``plan`` there with the job.

    ``submit`` returns what was queued (``job_id``, ``n_tasks``, ``logs``: clipsae.slurm.Submitted). A
    refused submission (a ClipsaeError) leaves nothing behind: no plan, since there is no job to follow,
    and not the group itself where this submission created it (``made_here``), since no task can have
    written to it. The plan names the job and its log folder by absolute path, so `clipsae status` finds
    them from anywhere; it is written right after sbatch returns, long before any task could finish.
    """
    from clipsae.errors import ClipsaeError

    try:
        job = submit()
    except ClipsaeError:
        if made_here:
            zb.remove_node(node)
        raise
    record_plan(node, {**plan, "job_id": job.job_id, "n_tasks": job.n_tasks, "logs": str(Path(job.logs).absolute())})
    return job


def record_plan(node: str | Path, plan: dict) -> None:
    """Record ``plan`` (replacing an earlier one) in the attributes of the group at ``node``."""
    zb.update_attributes(store_path(node), {PLAN: plan})


def read_plan(node: str | Path) -> dict | None:
    """The plan recorded at ``node``, or None."""
    plan = (zb.read_attributes(store_path(node)) or {}).get(PLAN)
    return plan if isinstance(plan, dict) else None
