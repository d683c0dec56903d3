"""``clipsae extract`` and ``clipsae shards make``."""

import os

import click

from clipsae.errors import ClipsaeError
from clipsae.pipeline.config import PRECISIONS, ExtractConfig, ModelConfig, parse_layers
from clipsae.slurm import slurm_config, slurm_options
from clipsae.store.layout import COMPRESSIONS, DTYPES, TOKEN_MODES
from clipsae.store.location import absolute


def _triple(value: str | None, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise ClipsaeError(f"{name} must be three comma-separated numbers, got {value!r}") from None
    if len(parts) != 3:
        raise ClipsaeError(f"{name} must be three comma-separated numbers, got {value!r}")
    return parts


@click.command("extract")
@click.option("--model", required=True, help="open_clip model name, e.g. ViT-L-14, ViT-B-32, RN50, or hf-hub:org/repo.")
@click.option("--pretrained", default=None, help="open_clip tag (laion2b_s32b_b82k), a local checkpoint file, or hf-hub:org/repo. Omit for random weights.")
@click.option("--layers", required=True, help="Comma-separated hooks: block indices (20,22,-1) or ln_pre, ln_post, embed; layer1..layer4, attnpool for ResNets.")
@click.option("--tokens", type=click.Choice(TOKEN_MODES), default="all", show_default=True, help="Which tokens of each hook to store.")
@click.option("--shards", required=True, help="Input tars: brace pattern 'data/{00000..00099}.tar', a directory, or a text file listing them.")
@click.option("--store", "store_path", required=True, help="Output Zarr store (created, or extended by a rerun): a folder, s3://… or gs://….")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cuda, cuda:1, cpu, or auto.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True, help="Stored dtype.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True, help="Compute precision (autocast).")
@click.option("--num-workers", type=int, default=None, help="Jobs sharing the tars (default: SLURM_ARRAY_TASK_COUNT, else 1).")
@click.option("--worker-index", type=int, default=None, help="This job's index (default: SLURM_ARRAY_TASK_ID, else 0).")
@click.option("--loader-workers", type=int, default=0, show_default=True, help="Processes decoding images.")
@click.option("--label-key", default=None, help="Take the label from this field of each sample's json instead of its cls file.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="none", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random init when --pretrained is omitted.")
@click.option("--preprocess-like", default=None, help="Use the preprocessing of this pretrained tag (for local checkpoints).")
@click.option("--image-mean", default=None, help="Override normalisation mean, e.g. 0.5,0.5,0.5.")
@click.option("--image-std", default=None, help="Override normalisation std.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@slurm_options(array=True)
def extract_cmd(model, pretrained, layers, tokens, shards, store_path, batch_size, device, dtype, precision,
                num_workers, worker_index, loader_workers, label_key, compression, seed, preprocess_like,
                image_mean, image_std, quiet, slurm_array, **slurm):
    """Run a CLIP vision tower over webdataset tars and store per-token activations.

    One store part per tar; a rerun skips finished tars and redoes unfinished ones. With
    --slurm-array N, the store is created here and N Slurm array tasks share the tars.
    """
    cfg = ExtractConfig(
        model=ModelConfig(
            name=model,
            pretrained=pretrained,
            init_seed=seed,
            preprocess_like=preprocess_like,
            image_mean=_triple(image_mean, "--image-mean"),
            image_std=_triple(image_std, "--image-std"),
        ),
        layers=parse_layers(layers),
        tokens=tokens,
        # Absolute, so that jobs started elsewhere (Slurm tasks) read and write the same files.
        shards=shards if "://" in shards else os.path.abspath(shards),
        store=str(absolute(store_path)),
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        precision=precision,
        num_workers=num_workers,
        worker_index=worker_index,
        loader_workers=loader_workers,
        label_key=label_key,
        compression=compression,
        progress=not quiet,
    )
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
