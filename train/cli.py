"""``clipsae train``: options in, one call to the API out.

Only click is imported here, so that ``--help`` and option errors answer at once; every check of
the options' values happens in ``train/configure.py``.
"""

import os
from pathlib import Path

import click

from clipsae.slurm import slurm_config, slurm_options
from clipsae.train import archs
from clipsae.train.config import DEFAULT_BATCH, DEFAULT_DEAD_TOKENS, DEFAULT_WARMUP, PRECISIONS


@click.command("train")
@click.option("--store", "store_path", required=True, help="Activation store from `clipsae extract`: a folder, s3://… or gs://….")
@click.option("--hook", default=None, help="Hook to train on; may be left out when the store has one hook.")
@click.option("--tokens", type=click.Choice(["cls", "patches", "all"]), default="all", show_default=True,
              help="Which stored tokens become training rows.")
@click.option("--arch", default="topk", show_default=True, help=f"{', '.join(archs.names())}; a comma list sweeps.")
@click.option("--expansion", default="16", show_default=True, help="Latents per input dimension; a comma list sweeps.")
@click.option("--k", "k_list", default="32", show_default=True, help="Active latents per token (TopK family); a comma list sweeps.")
@click.option("--l1", default="5", show_default=True, help="L1 coefficient λ of the relu SAE; a comma list sweeps.")
@click.option("--sweep", "sweep_file", type=click.Path(path_type=Path), default=None,
              help="JSON list of SAEs, e.g. [{\"arch\": \"topk\", \"k\": 32}, {\"arch\": \"relu\", \"l1\": 5}]; "
                   "missing keys take the options' values.")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 2e-4/√(n/2^14)].")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH, show_default=True, help="Tokens per step.")
@click.option("--tokens-total", type=float, default=None, help="Training tokens [default: one pass over the training rows].")
@click.option("--steps", type=int, default=None, help="Training steps (instead of --tokens-total).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cuda, cuda:N, cpu, or auto (cuda when there is one).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Encoder matmul precision; weights stay fp32 [default: bf16 on CUDA, fp32 on CPU].")
@click.option("--holdout", type=float, default=0.01, show_default=True, help="Fraction of images held out for evaluation.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory [default: runs/<store>-<hook>-<tokens>].")
@click.option("--warmup-steps", type=int, default=DEFAULT_WARMUP, show_default=True, help="Linear warm-up (at most a tenth of the run).")
@click.option("--dead-tokens", type=int, default=DEFAULT_DEAD_TOKENS, show_default=True,
              help="A latent silent this many tokens is dead (capped at a tenth of the run).")
@click.option("--aux-alpha", type=float, default=1 / 32, show_default=True, help="AuxK loss weight α.")
@click.option("--matryoshka-weighting", type=click.Choice(["uw", "rw"]), default="uw", show_default=True)
@click.option("--resample-every", type=int, default=0, show_default=True, help="relu: resample dead latents every N steps (0: never).")
@click.option("--buffer-rows", type=int, default=2**18, show_default=True, help="Shuffle buffer size in rows.")
@click.option("--loader-threads", type=int, default=2, show_default=True)
@click.option("--eval-every", type=int, default=0, help="Held-out evaluation every N steps [default: 10 per run].")
@click.option("--eval-rows", type=int, default=2**16, show_default=True, help="Held-out rows used for evaluation.")
@click.option("--checkpoint-every", type=int, default=0, help="Also checkpoint every N steps (0: by time only).")
@click.option("--checkpoint-minutes", type=float, default=10.0, show_default=True)
@click.option("--snapshot-every", type=float, default=0, show_default=True,
              help="Also export each SAE every this many training tokens (e.g. 1e8) under snapshots/<tokens>/ (0: never).")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's].")
@click.option("--wandb", "wandb_project", default=None, help="Also log to this wandb project (WANDB_MODE=offline works).")
@click.option("--quiet", is_flag=True, help="No progress bar or progress messages.")
@slurm_options(array=False)
def train_cmd(store_path, hook, tokens, arch, expansion, k_list, l1, sweep_file, lr, batch_size, tokens_total, steps, seed, device,
              precision, holdout, out, warmup_steps, dead_tokens, aux_alpha, matryoshka_weighting, resample_every, buffer_rows,
              loader_threads, eval_every, eval_rows, checkpoint_every, checkpoint_minutes, snapshot_every, threads, wandb_project, quiet,
              slurm_submit, **slurm):
    """Train sparse autoencoders on one hook of an activation store (several at once on a sweep).

    With --slurm, the options are checked here and training runs as a Slurm job that checkpoints
    and requeues itself on preemption or time-out.
    """
    options = dict(
        store=store_path, hook=hook, tokens=tokens, arch=arch, expansion=expansion, k=k_list, l1=l1, sweep=sweep_file, lr=lr,
        batch_size=batch_size, tokens_total=tokens_total, steps=steps, seed=seed, device=device, precision=precision,
        holdout=holdout, out=out, warmup_steps=warmup_steps, dead_tokens=dead_tokens, aux_alpha=aux_alpha,
        matryoshka_weighting=matryoshka_weighting, resample_every=resample_every, buffer_rows=buffer_rows,
        loader_threads=loader_threads, eval_every=eval_every, eval_rows=eval_rows, checkpoint_every=checkpoint_every,
        checkpoint_minutes=checkpoint_minutes, snapshot_every=snapshot_every, wandb_project=wandb_project)
    if slurm_submit:
        _submit(options, threads, slurm_config(slurm))
        return
    import torch

    from clipsae.train.configure import configure_training
    from clipsae.train.report import format_result
    from clipsae.train.trainer import run_train

    if threads:
        torch.set_num_threads(threads)
    # Under torchrun, process 0 speaks for all.
    quiet = quiet or os.environ.get("RANK", "0") != "0"
    plan = configure_training(**options)
    cfg = plan.cfg
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    if not quiet:
        click.echo(f"training {len(cfg.saes)} SAE(s) on {cfg.hook} ({cfg.tokens} tokens, d={plan.store.d(cfg.hook)}) "
                   f"for {cfg.steps} steps of {cfg.batch_size} → {cfg.out}", err=True)
    result = run_train(cfg, quiet=quiet, store=plan.store, held=plan.held)
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


def _submit(options: dict, threads: int | None, slurm) -> None:
    from clipsae.slurm import check_can_submit

    check_can_submit(slurm)
    from clipsae.train.slurm_job import submit_train

    job, out = submit_train(options, threads, slurm)
    click.echo(f"submitted job {job.job_id}: training into {out} (requeued on preemption or time-out); "
               f"logs in {job.logs}; progress in {out / 'metrics.jsonl'}")
