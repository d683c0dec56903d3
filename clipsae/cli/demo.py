"""``clipsae demo``: the whole pipeline on built-in synthetic data, in about a minute on a laptop CPU."""

from pathlib import Path

import click

from clipsae.errors import ClipsaeError
from clipsae.train.cli import sae_info_cmd, train_cmd


@click.command("demo")
@click.option("--out", default="demo_out", show_default=True, type=click.Path(), help="Folder for shards and store.")
@click.option("--n-images", type=int, default=384, show_default=True)
@click.option("--model", default="ViT-B-32", show_default=True)
@click.option("--pretrained", default=None, help="Pretrained tag or checkpoint; random weights if omitted.")
@click.option("--train-steps", type=int, default=100, show_default=True, help="Steps of the demo SAE.")
@click.pass_context
def demo_cmd(ctx, out, n_images, model, pretrained, train_steps):
    """Synthetic labelled shapes → webdataset tars → activation store → a TopK SAE, with summaries."""
    if n_images < 1:
        raise ClipsaeError(f"--n-images must be at least 1, not {n_images}")
    if train_steps < 1:
        raise ClipsaeError(f"--train-steps must be at least 1, not {train_steps}")
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract
    from clipsae.pipeline.synthetic import make_synthetic_shards
    from clipsae.store.info import format_summary, summarize
    from clipsae.store.reader import ActivationStore

    root = Path(out)
    shards = root / "shards"
    paths = make_synthetic_shards(shards, n_images=n_images, per_shard=128)
    click.echo(f"wrote {n_images} synthetic images ({len(paths)} tars) to {shards}")
    store_path = root / "acts.zarr"
    cfg = ExtractConfig(
        model=ModelConfig(name=model, pretrained=pretrained),
        layers=["6", "10", "ln_post"],
        tokens="all",
        shards=str(shards),
        store=str(store_path),
        batch_size=32,
    )
    r = run_extract(cfg)
    click.echo(f"extracted {r.images} images in {r.seconds:.1f}s ({r.images / max(r.seconds, 1e-9):.1f} images/s)")
    click.echo(format_summary(summarize(ActivationStore.open(store_path))))
    run_dir = root / "runs" / "topk-resid.10"
    click.echo(f"\ntraining a TopK SAE on resid.10, all tokens → {run_dir}")
    ctx.invoke(train_cmd, store_path=store_path, hook="resid.10", tokens="all", arch="topk", expansion="8", k_list="16",
               batch_size=512, steps=train_steps, holdout=0.1, out=run_dir, eval_every=50, quiet=False)
    click.echo("")
    ctx.invoke(sae_info_cmd, path=run_dir, as_json=False)
    click.echo(f"\nfeature-density histogram: {run_dir / 'density.png'}")
