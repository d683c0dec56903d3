"""Where the work on a store stands: each part complete, in progress, interrupted, damaged or missing
(store/parts.py says which is which), and which task owns it.

Activation parts are expected from the recorded plan (``extract --slurm-array``) or from a tar
list the caller gives; codes parts are expected for every complete store part.
"""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clipsae.store import layout
from clipsae.store.codes import CODES, codes_names
from clipsae.store.location import store_path
from clipsae.store.parts import COMPLETE, DAMAGED, IN_PROGRESS, INTERRUPTED, scan_parts, task_of
from clipsae.store.plan import read_plan

MISSING = "missing"


@dataclass(frozen=True)
class PartStatus:
    """One part's state; ``task`` is the array task that owns it (None without a plan)."""

    name: str
    state: str
    task: int | None = None
    started_by: dict | None = None


def _scan(parts_dir: Path) -> dict[str, PartStatus]:
    return {p.name: PartStatus(p.name, p.state, started_by=p.started_by) for p in scan_parts(parts_dir)}


def _owned(expected: list[str], n_tasks: int | None) -> dict[str, int | None]:
    return {name: (task_of(i, n_tasks) if n_tasks else None) for i, name in enumerate(expected)}


def parts_status(parts_dir: Path, expected: list[str] | None, n_tasks: int | None) -> list[PartStatus]:
    """Every part found under ``parts_dir`` and every expected one, in name order."""
    found = _scan(parts_dir)
    owner = _owned(expected or [], n_tasks)
    names = sorted(set(found) | set(expected or []))
    return [PartStatus(n, found[n].state if n in found else MISSING, owner.get(n),
                       found[n].started_by if n in found else None) for n in names]


def store_status(store: str | Path, expected: list[str] | None = None) -> dict:
    """The state of the store's parts and of each cached codes' parts, as a dict for ``--json``.

    ``expected``: the part names the store should have (from a tar list); without it, the recorded
    plan's; without either, parts not begun cannot be known and ``missing`` is None.
    """
    store = store_path(store)
    plan = read_plan(store)
    n_tasks = None
    if expected is None and plan is not None:
        expected, n_tasks = list(plan.get("parts", [])), plan.get("n_tasks")
    parts = parts_status(store / layout.PARTS, expected, n_tasks)
    complete = [p.name for p in parts if p.state == COMPLETE]
    codes = {}
    for name in codes_names(store):
        node = store / CODES / name
        cplan = read_plan(node)
        cparts = parts_status(node / layout.PARTS, complete, cplan.get("n_tasks") if cplan else None)
        codes[name] = {"plan": cplan, "parts": [asdict(p) for p in cparts]}
    return {"store": str(store), "plan": plan, "expected_known": expected is not None,
            "parts": [asdict(p) for p in parts], "codes": codes}


def _ago(t: float) -> str:
    s = max(0.0, time.time() - t)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _describe(p: dict) -> str:
    who = p.get("started_by") or {}
    bits = [f"{who['host']} pid {who['pid']}"] if "host" in who else []
    if who.get("slurm_job"):
        bits.append(f"Slurm job {who['slurm_job']}")
    if "time" in who:
        bits.append(f"started {_ago(who['time'])} ago")
    return f"{p['name']} ({', '.join(bits)})" if bits else p["name"]


def _section(title: str, parts: list[dict], expected_known: bool, plan: dict | None) -> list[str]:
    by_state = {s: [p for p in parts if p["state"] == s] for s in (COMPLETE, IN_PROGRESS, INTERRUPTED, DAMAGED, MISSING)}
    total = len(parts) if expected_known else None
    head = f"{title}: {len(by_state[COMPLETE])}" + (f" of {total}" if total is not None else "") + " parts complete"
    head += f", {len(by_state[IN_PROGRESS])} in progress, {len(by_state[INTERRUPTED])} interrupted"
    head += f", {len(by_state[DAMAGED])} damaged" if by_state[DAMAGED] else ""
    head += f", {len(by_state[MISSING])} missing" if expected_known else " (parts not begun are unknown: no plan; pass --shards)"
    lines = [head]
    if plan:
        job = f" of job {plan['job_id']}" if plan.get("job_id") else ""
        lines.append(f"  plan: {plan.get('n_tasks')} array tasks{job}, logs in {plan.get('logs')}")
    for state in (IN_PROGRESS, INTERRUPTED):
        lines += [f"  {state}: {_describe(p)}" for p in by_state[state]]
    lines += [f"  damaged: {p['name']} (its metadata is unreadable; `clipsae store verify` says what to rebuild)"
              for p in by_state[DAMAGED]]
    if by_state[MISSING]:
        names = [p["name"] for p in by_state[MISSING]]
        lines.append(f"  missing: {', '.join(names[:20])}" + (f" … (+{len(names) - 20})" if len(names) > 20 else ""))
    if plan and plan.get("n_tasks"):
        for t in range(int(plan["n_tasks"])):
            mine = [p for p in parts if p["task"] == t]
            done = sum(p["state"] == COMPLETE for p in mine)
            if done < len(mine):
                lines.append(f"  task {t}: {done} of {len(mine)} parts complete")
    if by_state[INTERRUPTED] or by_state[MISSING]:
        lines.append("  parts not complete belong to tasks still queued or running, or to tasks that failed "
                     "(see their logs); the same command again finishes exactly what is left")
    return lines


def format_status(s: dict) -> str:
    """The status as text for people: counts, the unfinished parts, tasks not done."""
    lines = _section(f"store {s['store']}", s["parts"], s["expected_known"], s["plan"])
    for name, c in s["codes"].items():
        lines += _section(f"codes {name}", c["parts"], True, c["plan"])
    return "\n".join(lines)
