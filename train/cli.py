"""``clipsae train``: options in, one call to the API out.

The options are the fields of ``TrainRequest`` (train/request.py) and ``RunSettings`` (train/config.py),
declared there once with their help and checks; neither module imports torch, so that ``--help``
and option errors answer at once. What depends on the store is checked in ``train/configure.py``.
"""

import os
from pathlib import Path

import click

from clipsae.options import click_options
from clipsae.slurm import slurm_config, slurm_options
from clipsae.train.config import RunSettings
from clipsae.train.request import TrainRequest


@click.command("train")
@click_options(TrainRequest)
@click_options(RunSettings)
@click.option("--quiet", is_flag=True, help="No progress bar or progress messages.")
@slurm_options(array=False)
def train_cmd(quiet, slurm_submit, **options):
    """Train sparse autoencoders on one hook of an activation store (several at once on a sweep).

    With --slurm, the options are checked here and training runs as a Slurm job that checkpoints
    and requeues itself on preemption or time-out.
    """
    slurm = {k: options.pop(k) for k in list(options) if k.startswith("slurm_")}
    if slurm_submit:
        _submit(options, slurm_config(slurm))
        return
    import torch

    from clipsae.train.configure import configure_training
    from clipsae.train.report import format_result
    from clipsae.train.trainer import run_train

    if options.get("threads"):
        torch.set_num_threads(options["threads"])  # before configuring, which already computes
    # Under torchrun, process 0 speaks for all.
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    plan = configure_training(options.pop("store"), **options)
    cfg = plan.cfg
    if not quiet:
        models = cfg.extra.get("universal", {}).get("models")
        what = (f"{cfg.hook} ({cfg.tokens} tokens, d={plan.store.d(cfg.hook)})" if not models else
                "universal over " + ", ".join(f"{Path(m['store']).name}:{m['hook']} (d={m['d']})" for m in models)
                + f" ({cfg.tokens} tokens)")
        click.echo(f"training {len(cfg.saes)} SAE(s) on {what} for {cfg.steps} steps of {cfg.batch_size} → {cfg.out}",
                   err=True)
    result = run_train(cfg, quiet=quiet, store=plan.store, held=plan.held, notes=plan.notes)
    if os.environ.get("RANK", "0") != "0":
        return
    if result.already_done:
        click.echo(f"{cfg.out}: already trained ({result.resumed_from} steps); nothing to do")
    if result.throughput and not quiet:
        t = result.throughput
        click.echo(f"trainer {t['train_tokens_per_s']:,.0f} tokens/s; loader {t['loader_rows_per_s']:,.0f} rows/s; "
                   f"the trainer waited for data {100 * t['wait_fraction']:.0f}% of the time", err=True)
    for line in format_result(result):
        click.echo(line)


def _submit(options: dict, slurm) -> None:
    from clipsae.slurm import check_can_submit

    check_can_submit(slurm)
    from clipsae.train.slurm_job import submit_train

    job, out = submit_train(options, slurm)
    click.echo(f"submitted job {job.job_id}: training into {out} (requeued on preemption or time-out); "
               f"logs in {job.logs}; progress in {out / 'metrics.jsonl'}")
