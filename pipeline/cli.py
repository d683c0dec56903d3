"""``clipsae extract`` and ``clipsae shards make``."""

import os
from dataclasses import fields

import click

from clipsae.options import click_options, renamed
from clipsae.pipeline.config import ExtractConfig, ModelConfig
from clipsae.slurm import slurm_config, slurm_options
from clipsae.store.location import absolute


@click.command("extract")
@click_options(ModelConfig)
@click_options(ExtractConfig)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@slurm_options(array=True)
@renamed("extract", "--no-progress", "--quiet", "quiet", "2026-11-29", is_flag=True)
def extract_cmd(quiet, slurm_array, **options):
    """Run a CLIP vision tower over webdataset tars and store per-token activations.

    One store part per tar; a rerun skips finished tars and redoes unfinished ones. With
    --slurm-array N, the store is created here and N Slurm array tasks share the tars.
    """
    slurm = {k: options.pop(k) for k in list(options) if k.startswith("slurm_")}
    model = ModelConfig(**{f.name: options.pop(f.name) for f in fields(ModelConfig)})
    # Absolute, so that jobs started elsewhere (Slurm tasks) read and write the same files.
    shards, store_path = options.pop("shards"), options.pop("store")
    cfg = ExtractConfig(model, shards=shards if "://" in shards else os.path.abspath(shards),
                        store=str(absolute(store_path)), progress=not quiet, **options)
    if slurm_array is not None:
        from clipsae.pipeline.extract_submit import submit_extract

        job = submit_extract(cfg, slurm_config(slurm), slurm_array)
        click.echo(f"submitted job {job.job_id}: {job.n_tasks} array tasks extracting into {store_path}; "
                   f"logs in {job.logs}; follow it with `clipsae status --store {store_path}`")
        return
    from clipsae.pipeline.extract import run_extract

    click.echo(run_extract(cfg).summary(store_path))


@click.group("shards")
def shards_group():
    """Make webdataset tars."""


@shards_group.command("make")
@click.option("--from-folder", "src", required=True, type=click.Path(exists=True, file_okay=False), help="ImageNet-style tree: one folder per class.")
@click.option("--out", required=True, type=click.Path(), help="Folder for the tars and classes.json.")
@click.option("--per-shard", type=int, default=1000, show_default=True, help="Images per tar.")
def shards_make_cmd(src, out, per_shard):
    """Turn a class-folder tree into labelled tars (cls = class index by sorted folder name)."""
    from clipsae.pipeline.folder_shards import make_shards_from_folder

    paths = make_shards_from_folder(src, out, per_shard)
    click.echo(f"wrote {len(paths)} tars to {out}")
