"""Submitting work to a Slurm cluster through submitit: job arrays for extract and encode, one
requeueable job for training. We write no scheduler of our own: submitit writes the sbatch
script, pickles the task with its arguments, and runs it on the node.

submitit is an optional extra (``pip install 'clipsae[slurm]'``) and is imported only when a job
is submitted. ``cluster="local"`` makes submitit run the same submission as processes on this
machine (its local executor), which is how a submission is tried without a cluster.
"""

import contextlib
import io
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from clipsae.errors import ClipsaeError

CLUSTERS = ("slurm", "local")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(value: str) -> int:
    """Minutes (rounded up) from Slurm's time forms: ``90`` (minutes), ``4:00:00``, ``1-12:00:00``, ``30:00``."""
    m = _TIME.match(value.strip())
    if not m:
        raise ClipsaeError(f"--slurm-time {value!r} is not a time; write minutes (90) or HH:MM:SS (4:00:00)")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if b is None:  # plain minutes, or days-hours
        minutes = a * 60 if days is not None else a
    elif c is None:  # MM:SS, or days-HH:MM
        minutes = a * 60 + b if days is not None else a + (b > 0)
    else:
        minutes = a * 60 + b + (c > 0)
    minutes += (days or 0) * 24 * 60
    if minutes < 1:
        raise ClipsaeError(f"--slurm-time {value!r} is under a minute")
    return minutes


def parse_extra(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``key=value`` pairs of ``--slurm-extra`` (sbatch options without their dashes)."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ClipsaeError(f"--slurm-extra {item!r} must be key=value, e.g. mem=64G or constraint=h100")
        pairs.append((key.strip().lstrip("-").replace("-", "_"), value.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class SlurmConfig:
    """Where and how a job is submitted; validated once, when the options are read."""

    logs: str = "clipsae-slurm"
    partition: str | None = None
    time_min: int = 240
    gpus: int | None = None
    cpus: int | None = None
    parallel: int | None = None  # array throttle: at most this many tasks at once
    account: str | None = None
    extra: tuple[tuple[str, str], ...] = ()
    cluster: str = "slurm"

    def __post_init__(self):
        if self.cluster not in CLUSTERS:
            raise ClipsaeError(f"--slurm-cluster must be one of {', '.join(CLUSTERS)}, not {self.cluster!r}")
        for name, value, least in (("--slurm-gpus", self.gpus, 0), ("--slurm-cpus", self.cpus, 1),
                                   ("--slurm-parallel", self.parallel, 1), ("--slurm-time", self.time_min, 1)):
            if value is not None and value < least:
                raise ClipsaeError(f"{name} must be at least {least}, got {value}")


def slurm_options(array: bool) -> Callable:
    """The ``--slurm-*`` options of a command; ``array`` adds ``--slurm-array N``, else ``--slurm``."""
    opts = [
        click.option("--slurm-array", type=int, default=None,
                     help="Submit N Slurm array tasks through submitit, each with its own --worker-index, and exit.")
        if array else
        click.option("--slurm", "slurm_submit", is_flag=True,
                     help="Submit as a requeueable Slurm job through submitit (checkpoints and requeues on "
                          "preemption or time-out), and exit."),
        click.option("--slurm-partition", default=None, help="Slurm partition."),
        click.option("--slurm-time", default="4:00:00", show_default=True, help="Time limit per job: minutes or HH:MM:SS."),
        click.option("--slurm-gpus", type=int, default=None, help="GPUs per job."),
        click.option("--slurm-cpus", type=int, default=None, help="CPU cores per job (loader processes need them)."),
        click.option("--slurm-parallel", type=int, default=None, help="At most this many array tasks at once."),
        click.option("--slurm-account", default=None, help="Slurm account to charge."),
        click.option("--slurm-extra", multiple=True, metavar="KEY=VALUE",
                     help="Any other sbatch option, e.g. mem=64G or constraint=h100 (repeatable)."),
        click.option("--slurm-logs", default="clipsae-slurm", show_default=True,
                     help="Folder for submitit's scripts and each job's logs (one subfolder per job id)."),
        click.option("--slurm-cluster", type=click.Choice(CLUSTERS), default="slurm", show_default=True,
                     help="local: submitit runs the same job as processes on this machine, to try a submission."),
    ]

    def decorate(f):
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


def slurm_config(options: dict) -> SlurmConfig:
    """The :class:`SlurmConfig` of a command's ``slurm_*`` keyword arguments."""
    return SlurmConfig(logs=options["slurm_logs"], partition=options["slurm_partition"],
                       time_min=parse_time(options["slurm_time"]), gpus=options["slurm_gpus"],
                       cpus=options["slurm_cpus"], parallel=options["slurm_parallel"],
                       account=options["slurm_account"], extra=parse_extra(options["slurm_extra"]),
                       cluster=options["slurm_cluster"])


def require_submitit():
    """The submitit module, or a one-line error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise ClipsaeError("submitting to Slurm needs submitit, an optional extra: pip install 'clipsae[slurm]'") from None
    return submitit


@dataclass(frozen=True)
class Submitted:
    """What was submitted: the job id (an array's id without a task suffix), tasks and log folder."""

    job_id: str
    n_tasks: int
    logs: Path


def check_can_submit(cfg: SlurmConfig):
    """Refuse at once, before any work, where nothing could be submitted; returns submitit."""
    submitit = require_submitit()
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None] if cfg.cluster == "slurm" else []
    if missing:
        raise ClipsaeError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH: submit from "
                           "a Slurm login node, or pass --slurm-cluster local to run the same submission on this machine")
    return submitit


def _executor(cfg: SlurmConfig, name: str):
    submitit = check_can_submit(cfg)
    # %A: the job's id, an array's without its task suffix, so an array's tasks share one folder.
    ex = submitit.AutoExecutor(folder=str(Path(cfg.logs) / "%A"), cluster=cfg.cluster)
    params = {"name": name, "timeout_min": cfg.time_min, "nodes": 1, "tasks_per_node": 1,
              "gpus_per_node": cfg.gpus, "cpus_per_task": cfg.cpus}
    if cfg.cluster == "slurm":
        params |= {"slurm_partition": cfg.partition, "slurm_account": cfg.account,
                   "slurm_array_parallelism": cfg.parallel or 256,
                   "slurm_additional_parameters": dict(cfg.extra)}
    ex.update_parameters(**params)
    return ex


def _submitted(jobs: list, logs: str) -> Submitted:
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    # The local executor runs an "array" as separate jobs: then name them all and the common folder.
    if len(ids) == 1:
        return Submitted(ids[0], len(jobs), Path(logs) / ids[0])
    return Submitted(",".join(ids), len(jobs), Path(logs))


@dataclass(frozen=True)
class WorkerTask:
    """One array task: ``run(cfg)`` on the node, ``cfg`` carrying the task's worker index; prints the
    result's summary line into the task's log. ``run`` is a module-level function, so it pickles."""

    run: Callable
    cfg: Any

    def __call__(self) -> str:
        line = self.run(self.cfg).summary(self.cfg.store)
        print(line, flush=True)
        return line


def check_array(slurm: SlurmConfig, cfg: Any, n_tasks: int, n_items: int, items: str) -> None:
    """Refuse an array that could not be submitted or would leave tasks idle, before any work."""
    check_can_submit(slurm)
    if n_tasks < 1:
        raise ClipsaeError(f"--slurm-array must be at least 1, got {n_tasks}")
    if cfg.num_workers is not None or cfg.worker_index is not None:
        raise ClipsaeError("--slurm-array sets each task's --num-workers and --worker-index; leave them out")
    if n_tasks > n_items:
        raise ClipsaeError(f"--slurm-array {n_tasks} is more tasks than the {n_items} {items}; use at most {n_items}")


def submit_workers(slurm: SlurmConfig, name: str, cfg: Any, n_tasks: int, run: Callable) -> Submitted:
    """Submit ``run`` as an array of ``n_tasks`` workers sharing the work (``--num-workers`` N,
    ``--worker-index`` I). Tasks show progress through `clipsae status`, not a bar redrawn into a log."""
    tasks = [WorkerTask(run, replace(cfg, num_workers=n_tasks, worker_index=i, progress=False)) for i in range(n_tasks)]
    return submit_array(slurm, name, tasks)


def _submit(cfg: SlurmConfig, name: str, submit: Callable) -> Submitted:
    ex = _executor(cfg, name)
    try:
        # submitit prints sbatch's refusal on stderr and then raises it: say it once, in our line.
        with contextlib.redirect_stderr(io.StringIO()):
            jobs = submit(ex)
    except Exception as exc:  # sbatch's refusal (partition, account, limits) arrives as several exception types
        raise ClipsaeError(f"the submission failed, nothing was queued: {exc}") from None
    return _submitted(jobs, cfg.logs)


def submit_array(cfg: SlurmConfig, name: str, tasks: Sequence[Callable[[], object]]) -> Submitted:
    """Submit one array job with a task per callable (each pickled, so picklable)."""
    return _submit(cfg, name, lambda ex: ex.submit_array(list(tasks)))


def submit_one(cfg: SlurmConfig, name: str, task: Callable[[], object]) -> Submitted:
    """Submit one job running ``task``; a task with a ``checkpoint`` method is requeued on preemption."""
    return _submit(cfg, name, lambda ex: [ex.submit(task)])
