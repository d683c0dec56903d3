"""``clipsae demo``: the whole pipeline on built-in synthetic data, in about two minutes on a laptop CPU."""

import os
import shutil
import sys
from pathlib import Path

import click

from clipsae.errors import ClipsaeError

DEMO_BATCH = 512
# The demo's SAEs: 768 latents (x1) with k = 16. Its store holds 19,200 tokens of random-weight activations of
# synthetic shapes; at x8 (6,144 latents) over 100 steps 86% of the latents never fired on held-out tokens, at x1
# over 300 steps about 4% do not.
DEMO_EXPANSION = 1


@click.command("demo")
@click.option("--out", default="demo_out", show_default=True, type=click.Path(), help="Folder for shards and store.")
@click.option("--n-images", type=int, default=384, show_default=True)
@click.option("--model", default="ViT-B-32", show_default=True)
@click.option("--pretrained", default=None, help="Pretrained tag or checkpoint; random weights if omitted.")
@click.option("--train-steps", type=int, default=300, show_default=True, help="Steps of the demo SAE.")
def demo_cmd(out, n_images, model, pretrained, train_steps):
    """Synthetic labelled shapes → tars → activation store → a TopK SAE → cached codes → analyses."""
    if n_images < 1:
        raise ClipsaeError(f"--n-images must be at least 1, not {n_images}")
    if train_steps < 1:
        raise ClipsaeError(f"--train-steps must be at least 1, not {train_steps}")
    from clipsae.analysis import commands
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.analysis.features.label_entropy import DEFAULT_MIN_HITS
    from clipsae.analysis.model.name_features import run_name_features
    from clipsae.analysis.report.build import ReportConfig, run_report
    from clipsae.analysis.report.siblings import report_dir
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract
    from clipsae.pipeline.synthetic import make_synthetic_shards
    from clipsae.store.info import format_summary, summarize
    from clipsae.store.reader import ActivationStore
    from clipsae.train.configure import configure_training
    from clipsae.train.load import SNAPSHOTS
    from clipsae.train.report import format_result, format_sae_info, sae_info
    from clipsae.train.trainer import run_train

    root = Path(out)
    shards = root / "shards"
    paths = make_synthetic_shards(shards, n_images=n_images, per_shard=128)
    click.echo(f"wrote {n_images} synthetic images ({len(paths)} tars) to {shards}")
    store_path = root / "acts.zarr"
    cfg = ExtractConfig(
        model=ModelConfig(name=model, pretrained=pretrained),
        layers=["6", "10", "ln_post", "embed"],
        tokens="all",
        shards=str(shards),
        store=str(store_path),
        batch_size=32,
    )
    r = run_extract(cfg)
    click.echo(f"extracted {r.images} images in {r.seconds:.1f}s ({r.images / max(r.seconds, 1e-9):.1f} images/s)")
    click.echo(format_summary(summarize(ActivationStore.open(store_path))))
    run_dir = root / "runs" / "topk-resid.10"
    # Three snapshots over the run, the last at its end, for the per-token error's progress.
    every = max(1, train_steps * DEMO_BATCH // 3)
    click.echo(f"\ntraining a TopK SAE on resid.10, all tokens, a snapshot every {every:,} tokens → {run_dir}")
    plan = configure_training(store_path, hook="resid.10", tokens="all", arch="topk", expansion=DEMO_EXPANSION, k=16,
                              batch_size=DEMO_BATCH, steps=train_steps, holdout=0.1, out=run_dir, eval_every=50,
                              snapshot_every=every)
    result = run_train(plan.cfg, store=plan.store, held=plan.held)
    click.echo("\n".join(format_result(result)) + "\n")
    click.echo(format_sae_info(sae_info(run_dir)))
    click.echo(f"\nencoding the store with the SAE (codes {run_dir.name!r}, cached in the store)")
    enc = run_encode(EncodeConfig(store_path, run_dir, device="cpu"))
    click.echo(f"encoded {enc.images} images, {enc.tokens} tokens of {enc.hook}")
    target = commands.Target.open(store_path, enc.name, None)
    for lines in (commands.run_top_images(target, 16, "max"), commands.run_label_entropy(target, 20, "max"),
                  commands.run_density(target, "max"), commands.run_token_mse(target),
                  commands.run_neuron_alignment(target)):
        click.echo("\n".join(lines))
    click.echo("\nmonosemanticity of the resid.10 features, in the embed hook's space")
    click.echo("\n".join(commands.run_monosemanticity(target, None, "max", "cpu")))
    snapshots = sorted((run_dir / SNAPSHOTS).iterdir(), key=lambda p: int(p.name))
    click.echo(f"\nencoding the {len(snapshots)} snapshots of the resid.10 SAE and drawing their per-token error")
    snapshot_codes = []
    for snap in snapshots:
        snapshot_codes.append(run_encode(EncodeConfig(store_path, snap, name=f"{run_dir.name}-{snap.name}",
                                                      device="cpu", progress=False)).name)
    click.echo("\n".join(commands.run_token_mse_series(store_path, snapshot_codes, target.out)))
    early_dir = root / "runs" / "topk-resid.6"
    click.echo(f"\ntraining a second TopK SAE, on resid.6, to correlate its features with the first's → {early_dir}")
    plan = configure_training(store_path, hook="resid.6", tokens="all", arch="topk", expansion=DEMO_EXPANSION, k=16,
                              batch_size=DEMO_BATCH, steps=train_steps, holdout=0.1, out=early_dir, eval_every=50)
    run_train(plan.cfg, store=plan.store, held=plan.held)
    early = run_encode(EncodeConfig(store_path, early_dir, device="cpu"))
    click.echo("\n".join(commands.run_correlate((store_path, enc.name), (store_path, early.name), None, 16, "max")))
    universal_out = _universal(root, store_path, train_steps)
    click.echo("\nsplicing each SAE into the model (CE recovered, KL) and sparse-probing its codes (the classes one "
               "against the rest, the k = 1, 2, 5 features of largest mean difference): the comparison's columns")
    for name in (enc.name, early.name):
        _splice_and_probe(store_path, name)
    compare_dir = root / "compare"
    click.echo(f"\nthe two layers side by side → {compare_dir}")
    click.echo("\n".join(commands.run_compare([(store_path, early.name), (store_path, enc.name)], compare_dir, "max",
                                              DEFAULT_MIN_HITS, None, "cpu")))
    seed_dir = root / "runs" / "topk-resid.10-seed1"
    click.echo(f"\ntraining the resid.10 SAE again with another seed, to see how many of its features recur → {seed_dir}")
    plan = configure_training(store_path, hook="resid.10", tokens="all", arch="topk", expansion=DEMO_EXPANSION, k=16,
                              batch_size=DEMO_BATCH, steps=train_steps, holdout=0.1, out=seed_dir, eval_every=50, seed=1)
    run_train(plan.cfg, store=plan.store, held=plan.held)
    sae_compare_dir = root / "sae-compare"
    click.echo("\n".join(commands.run_sae_compare(run_dir, seed_dir, sae_compare_dir, device="cpu")))
    click.echo("(the share of features matched one-to-one above 0.7 says how many directions both seeds learned; the "
               "initial weights' share, from different draws, is the chance level it must beat)")
    baselines_dir = _baselines(root, store_path, enc.name, seed_dir, train_steps, shards)
    click.echo("\nnaming the resid.10 features through the text tower (vocabulary: the demo's class names)")
    click.echo("\n".join(run_name_features(target, shards / "classes.json", progress=False)))
    used = _use_features(store_path, enc.name, shards)
    click.echo("\nwriting the browsable reports of both SAEs' features")
    for name in (early.name, enc.name):
        click.echo("\n".join(run_report(ReportConfig(store_path, name, progress=False))))
    report = report_dir(store_path, enc.name) / "index.html"
    # The hints must run as printed: `clipsae` is on PATH only inside an activated venv.
    exe = "clipsae" if shutil.which("clipsae") else os.path.relpath(Path(sys.executable).parent / "clipsae")
    click.echo(f"""
what to look at and do next:
  {target.out}   the analyses: top_images.csv, label_entropy.csv, density.csv, token_mse.csv,
      monosemanticity.csv, neuron_alignment.csv, names.csv, splice.json, PNG plots,
      correlate-{early.name}/ (the resid.10 features matched to resid.6's) and token_mse_series.png
      (the snapshots' per-token error)
  {used['probe']}   which features track each image's colour, shape and size (probe_top.csv)
  {used['search']}   images found by the best "red" feature, by a stored image and by a text
  {used['intervene']}   the model with the "red" features ablated: what its zero-shot read-out lost
  {compare_dir / 'compare.csv'}   resid.6 and resid.10 side by side (and compare.png)
  {universal_out / 'universal.png'}   which latents of one universal SAE the two layers share (universal.csv)
  {sae_compare_dir / 'sae_compare.csv'}   the resid.10 SAE's features matched to another seed's
  {baselines_dir / 'compare.html'}   the SAE (two seeds) beside the PCA, k-means, NMF and untrained baselines,
      with sparse probing, patch-level concept alignment (patch_probe*.csv) and absorption (absorption.csv)
  {run_dir / 'density.png'}   the SAE's held-out feature-density histogram
  {exe} store verify {store_path}   checks every chunk of the store
  {exe} train --store {store_path} --hook resid.6 --arch topk,batchtopk --expansion 8 --k 16 --steps 1000
                                      a sweep of two SAEs on another layer
  your own images: {exe} shards make --from-folder DIR --out tars, then {exe} extract and {exe} train
  (see README.md and docs/commands.md)

explore the features live in a browser (features, image patches, steering; Ctrl-C stops it):
  {exe} serve --store {store_path} --codes {enc.name} --codes {early.name}

the report of the resid.10 SAE's features (open it in a browser):
  {report}""")


def _baselines(root: Path, store_path: Path, sae_codes: str, seed_dir: Path, train_steps: int, shards: Path) -> Path:
    """The resid.10 SAE's two seeds beside the PCA, k-means, NMF and untrained baselines and a JumpReLU, a Gated,
    an Archetypal and an MP SAE, scored alike: encoded,
    sparse-probed, patch-probed, measured for absorption and compared in one table. Returns the comparison's folder."""
    from clipsae.analysis import commands
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.analysis.evaluation.absorption import run_absorption
    from clipsae.analysis.evaluation.patch_probe import run_patch_probe
    from clipsae.analysis.features.label_entropy import DEFAULT_MIN_HITS
    from clipsae.train.configure import configure_training
    from clipsae.train.trainer import run_train

    click.echo("\nfitting the baselines on resid.10 from the same batches: PCA (top 16 projections by magnitude), "
               "k-means (768 centroids), saev's semi-NMF (64 concepts: its codes are dense, and 300 updates of "
               "768 would take minutes here) and an untrained TopK SAE of the SAE's width; beside them, the other "
               "architectures at that width: JumpReLU and Gated on their default sparsity (they find their own L0), "
               "an Archetypal SAE and a Matching-Pursuit SAE of 16 picks")
    dirs = {}
    for arch, width in (("pca,kmeans", {"expansion": 1}), ("nmf", {"latents": 64}), ("random", {"expansion": DEMO_EXPANSION}),
                        ("jumprelu,gated,archetypal,mp", {"expansion": DEMO_EXPANSION})):
        plan = configure_training(store_path, hook="resid.10", tokens="all", arch=arch, k=16, **width,
                                  batch_size=DEMO_BATCH, steps=train_steps, holdout=0.1, eval_every=50,
                                  out=root / "runs" / f"baselines-{arch.replace(',', '-')}-resid.10")
        dirs |= run_train(plan.cfg, store=plan.store, held=plan.held).dirs
    names = [sae_codes, run_encode(EncodeConfig(store_path, seed_dir, device="cpu", progress=False)).name]
    names += [run_encode(EncodeConfig(store_path, path, name=f"{label}-resid.10", device="cpu", progress=False)).name
              for label, path in dirs.items()]
    click.echo("splicing the second seed and each baseline into the model (CE recovered, KL), and sparse-probing "
               "their codes:")
    for name in names[1:]:
        _splice_and_probe(store_path, name)
    click.echo("\npatch-level concept alignment (saev's probe1d: each feature a 1-D probe of each class over the patches "
               "the segmentation masks label) and absorption (SAEBench's, each shape the parent of its colour classes):")
    for name in names:
        t = commands.Target.open(store_path, name, None, progress=False)
        click.echo(run_patch_probe(t)[0])
        click.echo("\n".join(run_absorption(t, shards / "hierarchy.json")[:-1]))
    out = root / "baselines-compare"
    click.echo(f"\nthe SAE's two seeds (one row) beside the baselines → {out}")
    click.echo("\n".join(commands.run_compare([(store_path, n) for n in names], out, "max", DEFAULT_MIN_HITS, None, "cpu")))
    click.echo("(the seeds' stability: of the latents live in both seeds, the share whose decoder directions are matched "
               "one-to-one at cosine ≥ 0.7 between seed 0 and seed 1; stability_init, the same share for their initial "
               "weights, is the chance level it must beat)")
    return out


def _universal(root: Path, store_path: Path, train_steps: int) -> Path:
    """A universal SAE over the two layers (one set of latents, an encoder and a decoder per layer), each layer
    encoded with its own SAE, and which latents the layers share. Returns the analysis folder."""
    from clipsae.analysis import commands
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.train.configure import configure_training
    from clipsae.train.trainer import run_train

    run_dir = root / "runs" / "universal-resid.6-resid.10"
    click.echo(f"\ntraining a universal SAE over resid.6 and resid.10 (one set of latents, an encoder and a decoder per "
               f"layer) → {run_dir}")
    plan = configure_training(None, universal=f"{store_path}:resid.6,{store_path}:resid.10", tokens="all", arch="topk",
                              expansion=DEMO_EXPANSION, k=16, batch_size=DEMO_BATCH, steps=train_steps, holdout=0.1,
                              out=run_dir, eval_every=50)
    run_train(plan.cfg, store=plan.store, held=plan.held)
    names = []
    for m, hook in enumerate(("resid.6", "resid.10")):
        names.append(run_encode(EncodeConfig(store_path, run_dir / "models" / str(m), name=f"universal-{hook}",
                                             device="cpu", progress=False)).name)
    out = root / "universal"
    click.echo("\n".join(commands.run_universal([(store_path, n) for n in names], out, "max", "cpu")))
    return out


def _splice_and_probe(store_path: Path, name: str) -> None:
    """What a comparison table shows beside the codes' own figures: the SAE of codes ``name`` spliced into the
    model (CE recovered, KL), and SAEBench's sparse probing of the codes (the classes one against the rest, with
    the k = 1, 2, 5 features of largest mean difference)."""
    from clipsae.analysis import commands
    from clipsae.analysis.evaluation.sparse_probe import run_sparse_probe
    from clipsae.analysis.model.splice import run_splice

    t = commands.Target.open(store_path, name, None, progress=False)
    click.echo("\n".join(run_splice(t, images=32, progress=False)))
    try:
        click.echo(run_sparse_probe(t, None, (1, 2, 5), "max", True)[0])
    except ClipsaeError as exc:  # a demo of a few images has too few per class to split
        click.echo(f"{name}: sparse probing left out: {exc}")


def _use_features(store_path: Path, codes: str, shards: Path) -> dict[str, Path]:
    """Probe the features against what the synthetic images show, search with them, and intervene:
    the features used, not only described. Returns where each wrote."""
    from clipsae.analysis import commands
    from clipsae.analysis.attributes import from_tars
    from clipsae.analysis.features.probe import run_probe
    from clipsae.analysis.features.search import SearchRequest, run_search
    from clipsae.analysis.model.intervene_run import Selection, edits_from_probe, run_intervene
    from clipsae.analysis.model.query import ModelChoice

    target = commands.Target.open(store_path, codes, None)
    click.echo("\nprobing every feature against what the images show (their .json: colour, shape, size)")
    attrs = from_tars(target.store, ["colour", "shape", "size"])
    click.echo("\n".join(run_probe(target, attrs, top=5)))
    red = edits_from_probe(target.out, "colour=red:3", target.codes.d_sae)
    best_red = red.split(",")[0].split(":")[0]
    choice = ModelChoice(device="cpu")
    out = {"probe": target.out / "probe_top.csv", "search": target.out / "search", "intervene": target.out / "intervene"}
    for name, req in (("features", SearchRequest(features=best_red)),
                      ("key", SearchRequest(key=str(target.store.keys()[0]))),
                      ("text", SearchRequest(text="a photo of a red circle."))):
        click.echo(f"\nsearching by {name}")
        t = commands.Target.open(store_path, codes, out["search"] / name)
        click.echo("\n".join(run_search(t, req, 12, "max", choice)))
    click.echo(f"\nablating the three features that best predict colour=red ({red}) inside the model")
    t = commands.Target.open(store_path, codes, out["intervene"])
    group = ("colour", *attrs.grouping("colour"))
    click.echo("\n".join(run_intervene(t, red, "all", (), Selection(n=64), "max", choice, None, None,
                                       contrast="a photo of a red shape.|a photo of a blue shape.", group=group,
                                       progress=False)))
    return out
