"""The plan of a submitted array: which parts the tasks will write, recorded before they start.

A store alone knows its complete and unfinished parts; only the plan knows the parts not begun
yet. ``extract --slurm-array`` records it in the store's root and ``encode --slurm-array`` in the
codes group, each before submitting, so no task ever writes it.
"""

from pathlib import Path

from clipsae.store import zarr_backend as zb
from clipsae.store.location import store_path

PLAN = "plan"


def record_plan(node: str | Path, plan: dict) -> None:
    """Record ``plan`` (replacing an earlier one) in the attributes of the group at ``node``."""
    zb.update_attributes(store_path(node), {PLAN: plan})


def read_plan(node: str | Path) -> dict | None:
    """The plan recorded at ``node``, or None."""
    plan = (zb.read_attributes(store_path(node)) or {}).get(PLAN)
    return plan if isinstance(plan, dict) else None
