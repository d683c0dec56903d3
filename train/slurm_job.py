"""``clipsae train --slurm``: training as one requeueable Slurm job through submitit.

Slurm sends a signal (USR2, 90 s ahead by submitit's default) before it preempts a job or its time
runs out. The job turns that signal into a request to stop: the trainer checkpoints after the step
under way, and submitit's own handler then requeues the job, whose run resumes from that checkpoint
exactly as a rerun of the same command would. Import this module only where submitit is installed.
"""

import os
import signal
import threading
from pathlib import Path

import submitit

from clipsae.errors import ClipsaeError
from clipsae.slurm import SlurmConfig, Submitted, submit_one
from clipsae.store.location import absolute


def _preempt_signal() -> int:
    # submitit's preemption signal, USR2 unless the user changed it through submitit's variable.
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name)


class TrainJob(submitit.helpers.Checkpointable):
    """``clipsae train`` with the given options, on the node; requeued whole on preemption."""

    def __init__(self, options: dict):
        self.options = options

    def __call__(self) -> str:
        import torch

        from clipsae.train.configure import configure_training
        from clipsae.train.report import format_result
        from clipsae.train.trainer import TrainingStopped, run_train

        if self.options.get("threads"):
            torch.set_num_threads(self.options["threads"])
        sig = _preempt_signal()
        requeue = signal.getsignal(sig)
        stop = threading.Event()
        signal.signal(sig, lambda *_: stop.set())
        # Configured here, not on the login node: "auto" must find this node's GPU.
        plan = configure_training(**self.options)
        try:
            result = run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held, stop=stop.is_set)
        except TrainingStopped as exc:
            print(f"preempted or out of time: checkpointed at step {exc.step} in {plan.cfg.out}; requeueing", flush=True)
            if callable(requeue):
                requeue(sig, None)  # submitit checkpoints this job's submission, requeues it and exits
            raise ClipsaeError(f"stopped at step {exc.step}; rerun the same command to resume") from None
        lines = format_result(result)
        print("\n".join(lines), flush=True)
        return "\n".join(lines)


def submit_train(options: dict, slurm: SlurmConfig) -> tuple[Submitted, Path]:
    """Check the options here (one-line errors before anything is queued), then submit the job.

    Returns the submission and the run directory the job writes.
    """
    from clipsae.train.configure import configure_training
    from clipsae.train.universal_data import parse_universal

    plan = configure_training(**options)
    out = Path(plan.cfg.out).absolute()
    options = {**options, "out": out}
    if options.get("store") is not None:
        options["store"] = str(absolute(options["store"]))
    if options.get("universal"):
        options["universal"] = ",".join(f"{absolute(store)}:{hook}" for store, hook in parse_universal(options["universal"]))
    if options.get("sweep"):
        options["sweep"] = Path(options["sweep"]).absolute()
    return submit_one(slurm, "clipsae-train", TrainJob(options)), out
