"""``clipsae encode`` and ``clipsae analyze …``: options in, one call to the analysis API out.

Only click is imported at module level, so that ``--help`` and option errors answer at once.
"""

from pathlib import Path

import click

from clipsae.analysis.defaults import ENTROPY_K, TOP_IMAGES_K
from clipsae.analysis.encode_config import EncodeConfig
from clipsae.options import click_options, renamed
from clipsae.slurm import slurm_config, slurm_options
from clipsae.store.location import absolute


@click.command("encode")
@click_options(EncodeConfig)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@slurm_options(array=True)
def encode_cmd(quiet, slurm_array, **options):
    """Encode a store's activations with an SAE and cache the codes in the store.

    With --slurm-array N, the codes group is created here and N Slurm array tasks share the parts.
    """
    from clipsae.analysis.encode import run_encode

    slurm = {k: options.pop(k) for k in list(options) if k.startswith("slurm_")}
    store_path, sae_path = options.pop("store"), options.pop("sae")
    # Absolute, so that jobs started elsewhere (Slurm tasks) read and write the same files.
    # Hub ids stay as they are; a local SAE is made absolute like the store.
    sae = sae_path if str(sae_path).startswith("hf-hub:") else sae_path.absolute()
    cfg = EncodeConfig(absolute(store_path), sae, progress=not quiet, **options)
    if slurm_array is not None:
        from clipsae.analysis.encode_submit import submit_encode

        job, warning = submit_encode(cfg, slurm_config(slurm), slurm_array)
        if warning:
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"submitted job {job.job_id}: {job.n_tasks} array tasks encoding {store_path} as codes "
                   f"{cfg.codes_name!r}; logs in {job.logs}; follow it with `clipsae status --store {store_path}`")
        return
    r = run_encode(cfg)
    if r.warning:
        click.echo(f"warning: {r.warning}", err=True)
    click.echo(r.summary(store_path))
    click.echo(f"next: clipsae analyze top-images --store {store_path} --codes {r.name}")


class _Analyses(click.Group):
    """Subcommands listed in the order a researcher meets them."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group("analyze", cls=_Analyses)
def analyze_group():
    """Statistics, tables and plots computed from codes cached by `clipsae encode`."""


def _codes_options(f):
    f = click.option("--quiet", is_flag=True, help="No progress bars.")(f)
    f = click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Output folder [default: <store>/codes/<codes>-analysis].")(f)
    f = click.option("--codes", "codes_name", required=True, help="Name of the cached codes (`clipsae encode --name`).")(f)
    f = click.option("--store", "store_path", required=True, help="Activation store: a folder, s3://bucket/… or gs://bucket/….")(f)
    return f


_DEVICE = click.option("--device", default="auto", show_default=True, help="cuda, cuda:N, cpu, or auto.")


def _embed_hook(when_missing: str):
    """The --embed-hook option; ``when_missing`` says what happens where the store has no embed hook."""
    return click.option("--embed-hook", default=None,
                        help=f"The store's hook whose per-image vector (pooled or CLS) embeds the images for the "
                             f"monosemanticity score [default: embed; {when_missing}].")


_BY = click.option("--by", type=click.Choice(["max", "cls", "mean"]), default="max", show_default=True,
                   help="A feature's value on an image: max over its tokens, its CLS token's, or the mean.")
_MIN_HITS = click.option("--min-hits", type=int, default=10, show_default=True,
                         help="Labelled top images a feature needs for its label entropy.")


_MODEL_OPTIONS = (
    click.option("--sae", "sae_path", type=click.Path(path_type=Path), default=None,
                 help="The SAE that made the codes [default: the folder encode recorded]."),
    click.option("--model", default=None, help="open_clip model name [default: the store's]."),
    click.option("--pretrained", default=None,
                 help="Weights: open_clip tag, checkpoint file or hf-hub:org/repo [default: the store's]."),
    click.option("--shards", type=click.Path(path_type=Path), default=None,
                 help="Folder now holding the store's tars [default: where the store says]."),
    _DEVICE,
    click.option("--batch-size", type=int, default=64, show_default=True, help="Images per forward pass."),
)


def _model_options(f):
    for opt in reversed(_MODEL_OPTIONS):
        f = opt(f)
    return f


def _run(fn, store_path, codes_name, out, quiet, *args):
    from clipsae.analysis.commands import Target

    for line in fn(Target.open(store_path, codes_name, out, progress=not quiet), *args):
        click.echo(line)


@analyze_group.command("top-images")
@_codes_options
@click.option("-k", "k", type=int, default=TOP_IMAGES_K, show_default=True, help="Images per feature.")
@_BY
@click.option("--features", default=None, help="Only these features, e.g. 12,625 (their top images are printed too).")
def top_images_cmd(store_path, codes_name, out, quiet, k, by, features):
    """Each feature's top-k images (top_images.csv)."""
    from clipsae.analysis.commands import Target, parse_features, run_top_images
    from clipsae.analysis.features.top_images import check_k

    check_k(k)
    t = Target.open(store_path, codes_name, out, progress=not quiet)
    for line in run_top_images(t, k, by, parse_features(features, t.codes.d_sae)):
        click.echo(line)


@analyze_group.command("label-entropy")
@_codes_options
@click.option("-k", "k", type=int, default=ENTROPY_K, show_default=True, help="Top images per feature that the entropy covers.")
@_BY
@_MIN_HITS
def label_entropy_cmd(store_path, codes_name, out, quiet, k, by, min_hits):
    """Entropy of the labels of each feature's top images (label_entropy.csv)."""
    from clipsae.analysis.commands import run_label_entropy
    from clipsae.analysis.features.top_images import check_k

    check_k(k)
    _run(run_label_entropy, store_path, codes_name, out, quiet, k, by, min_hits)


@analyze_group.command("density")
@_codes_options
@_BY
@_MIN_HITS
def density_cmd(store_path, codes_name, out, quiet, by, min_hits):
    """Firing densities, dead and dense features, and their plots (density.csv, PNGs)."""
    from clipsae.analysis.commands import run_density

    _run(run_density, store_path, codes_name, out, quiet, by, min_hits)


@analyze_group.command("token-mse")
@click.option("--store", "store_path", required=True, help="Activation store: a folder, s3://bucket/… or gs://bucket/….")
@click.option("--codes", "codes_names", required=True, multiple=True,
              help="Name of the cached codes; repeat it for several (a run's snapshots) to draw their maps side by side.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: <store>/codes/<first codes>-analysis].")
def token_mse_cmd(store_path, codes_names, out):
    """Reconstruction error per token position and its heat map (token_mse.csv, PNG); with several
    codes, their maps on one scale (token_mse_series.csv, PNG)."""
    from clipsae.analysis.commands import run_token_mse, run_token_mse_series

    if len(codes_names) == 1:
        _run(run_token_mse, store_path, codes_names[0], out, True)  # sums only: no pass to show
        return
    for line in run_token_mse_series(store_path, list(codes_names), out):
        click.echo(line)


@analyze_group.command("search")
@_codes_options
@click.option("--features", default=None, help="Rank by Σ weight × value of these features, e.g. 12,625:2.0 (weights default 1).")
@click.option("--key", default=None, help="Rank by cosine with this stored image's features (it is left out of the hits).")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="Rank by cosine with this image file's features (repeat: their mean); runs the store's model.")
@click.option("--text", default=None, help="Rank by the features whose decoder directions best match this text.")
@click.option("--text-features", type=int, default=8, show_default=True, help="Features a --text query keeps.")
@click.option("--edit", default=None, help="Change the query image's features first: 12:0 (remove), 625:x2 (scale), 7=5.0 (set).")
@click.option("-k", "k", type=int, default=TOP_IMAGES_K, show_default=True, help="Images returned.")
@_BY
@_model_options
def search_cmd(store_path, codes_name, out, quiet, features, key, images, text, text_features, edit, k, by, sae_path, model,
               pretrained, shards, device, batch_size):
    """Images whose features best match a query: features, a stored image, an image file or a text (search.csv, PNG)."""
    from clipsae.analysis.commands import Target
    from clipsae.analysis.features.search import SearchRequest, run_search
    from clipsae.analysis.features.top_images import check_k
    from clipsae.analysis.model.query import ModelChoice
    from clipsae.device import resolve_device

    check_k(k)
    req = SearchRequest(features, key, tuple(images), text, text_features, edit)
    t = Target.open(store_path, codes_name, out, progress=not quiet)
    choice = ModelChoice(sae_path, model, pretrained, str(resolve_device(device)))
    for line in run_search(t, req, k, by, choice, shards):
        click.echo(line)


@analyze_group.command("intervene")
@_codes_options
@click.option("--edit", default=None, help="Features to change: 12:0 (ablate), 625:x3 (scale), 7=5.0 (clamp); several, comma-separated.")
@click.option("--ablate-probe", default=None, metavar="ATTR[:N]",
              help="Ablate the N (5) features `analyze probe` ranked first for attribute ATTR (probe_top.csv).")
@click.option("--where", type=click.Choice(["all", "cls", "patches", "firing"]), default="all", show_default=True,
              help="Tokens the edit touches; firing: only where the feature is already active.")
@click.option("--keep-top", default=None, help="PatchSAE's test instead: each token keeps its K largest features, e.g. 1,2,4,8.")
@click.option("--images", "keys", default=None, help="Images to run, by key (comma-separated).")
@click.option("--top-of", type=int, default=None, help="Run this feature's --first best images.")
@click.option("--first", "n_images", type=int, default=64, show_default=True,
              help="Images to run: the store's first N, or with --top-of the feature's N best.")
@_BY
@click.option("--classes", type=click.Path(path_type=Path), default=None,
              help="Class names for zero-shot probabilities [default: classes.json beside the tars].")
@click.option("--contrast", default=None, metavar="TEXT A|TEXT B",
              help="Also report P(TEXT A) against TEXT B before and after, e.g. 'a photo of a man|a photo of a woman'.")
@click.option("--group-by", default=None, help="Report the contrast per value of this attribute, or per category of a text one (with --attributes or --attributes-json).")
@click.option("--attributes", "attributes_csv", type=click.Path(path_type=Path), default=None, help="CSV of attributes for --group-by.")
@click.option("--attributes-json", default=None, help="Or the samples' .json field for --group-by.")
@_model_options
@renamed("analyze intervene", "--keys", "--images", "keys", "2026-11-29")
@renamed("analyze intervene", "--n-images", "--first", "n_images", "2026-11-29", type=int)
def intervene_cmd(store_path, codes_name, out, quiet, edit, ablate_probe, where, keep_top, keys, top_of, n_images, by, classes,
                  contrast, group_by, attributes_csv, attributes_json, sae_path, model, pretrained, shards, device,
                  batch_size):
    """Change features inside the model and measure what moves: embedding cosine, zero-shot probabilities (intervene.csv)."""
    from clipsae.analysis.commands import Target
    from clipsae.analysis.model.intervene_run import Selection, edits_from_probe, run_intervene
    from clipsae.analysis.model.query import ModelChoice
    from clipsae.device import resolve_device
    from clipsae.errors import ClipsaeError

    if edit and ablate_probe:
        raise ClipsaeError("give --edit or --ablate-probe, not both")
    t = Target.open(store_path, codes_name, out, progress=not quiet)
    if ablate_probe:
        from clipsae.store.codes import default_analysis_dir

        edit = edits_from_probe(default_analysis_dir(store_path, codes_name), ablate_probe, t.codes.d_sae)
    try:
        ks = tuple(int(k) for k in keep_top.split(",")) if keep_top else ()
    except ValueError:
        raise ClipsaeError(f"--keep-top must be comma-separated integers, not {keep_top!r}") from None
    group = None
    if group_by:
        from clipsae.analysis.attributes import from_options

        attrs = from_options(t.store, attributes_csv, attributes_json, shards, needed_by="--group-by: ")
        group = (group_by, *attrs.grouping(group_by))
    selection = Selection(tuple(k.strip() for k in keys.split(",")) if keys else (), top_of, n_images)
    choice = ModelChoice(sae_path, model, pretrained, str(resolve_device(device)))
    for line in run_intervene(t, edit, where, ks, selection, by, choice, shards, classes, batch_size, contrast, group,
                              not quiet):
        click.echo(line)


@analyze_group.command("probe")
@_codes_options
@click.option("--attributes", "attributes_csv", type=click.Path(path_type=Path), default=None,
              help="CSV of per-image attributes: a key column (key, __key__, or the first), then one column each.")
@click.option("--attributes-json", default=None, help="Or these fields of each sample's .json in the store's tars, e.g. smiling,male.")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Folder now holding the store's tars, for --attributes-json [default: where the store says].")
@_BY
@click.option("--top", type=int, default=10, show_default=True, help="Features per attribute and direction in probe_top.csv.")
@click.option("--max-entries", type=int, default=2**26, show_default=True,
              help="Firings held in memory at once; more features than fit cost more passes over the codes.")
def probe_cmd(store_path, codes_name, out, quiet, attributes_csv, attributes_json, shards, by, top, max_entries):
    """Each feature as a one-feature probe of each attribute: AUROC and best F1, or Pearson and Spearman (probe.csv)."""
    from clipsae.analysis.attributes import from_options
    from clipsae.analysis.commands import Target
    from clipsae.analysis.features.probe import run_probe

    t = Target.open(store_path, codes_name, out, progress=not quiet)
    attrs = from_options(t.store, attributes_csv, attributes_json, shards)
    for line in run_probe(t, attrs, by, top, max_entries):
        click.echo(line)


@analyze_group.command("sparse-probe")
@_codes_options
@click.option("--k", "ks", default="1,2,5", show_default=True, help="Feature counts to probe with, comma-separated.")
@click.option("--attributes", "attributes_csv", type=click.Path(path_type=Path), default=None,
              help="CSV of per-image attributes whose binary columns are tasks too (as `analyze probe` reads it).")
@click.option("--attributes-json", default=None, help="Or these fields of each sample's .json in the store's tars.")
@click.option("--classes", type=click.Path(path_type=Path), default=None,
              help="Class names for the class tasks' names [default: classes.json beside the tars].")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Folder now holding the store's tars [default: where the store says].")
@_BY
@click.option("--dense/--no-dense", default=True, show_default=True,
              help="Also fit each task on the hook's pooled activations: the ceiling.")
def sparse_probe_cmd(store_path, codes_name, out, quiet, ks, attributes_csv, attributes_json, classes, shards, by, dense):
    """SAEBench's sparse probing: each class and binary attribute predicted from its k best features (sparse_probe.csv)."""
    from clipsae.analysis.attributes import from_options
    from clipsae.analysis.commands import Target
    from clipsae.analysis.evaluation.sparse_probe import run_sparse_probe
    from clipsae.errors import ClipsaeError

    try:
        k_list = tuple(int(k) for k in ks.split(","))
    except ValueError:
        raise ClipsaeError(f"--k must be comma-separated integers, not {ks!r}") from None
    t = Target.open(store_path, codes_name, out, progress=not quiet)
    attrs = (from_options(t.store, attributes_csv, attributes_json, shards)
             if attributes_csv is not None or attributes_json is not None else None)
    for line in run_sparse_probe(t, attrs, k_list, by, dense, classes, shards):
        click.echo(line)


@analyze_group.command("patch-probe")
@_codes_options
@click.option("--min-share", type=float, default=0.5, show_default=True,
              help="A patch is a sample when its label covers at least this share of its pixels.")
@click.option("--top", type=int, default=None, help="Keep each class's N best features in patch_probe.csv [default: every live feature].")
@click.option("--device", default="cpu", show_default=True, help="Where the Newton passes run: cpu, cuda, cuda:N or auto.")
def patch_probe_cmd(store_path, codes_name, out, quiet, min_share, top, device):
    """saev's probe1d: a 1-D logistic probe of each feature for each segmented class (patch_probe.csv, mAP)."""
    from clipsae.analysis.commands import Target
    from clipsae.analysis.evaluation.patch_probe import run_patch_probe

    t = Target.open(store_path, codes_name, out, progress=not quiet)
    for line in run_patch_probe(t, min_share, top, device):
        click.echo(line)


@analyze_group.command("absorption")
@_codes_options
@click.option("--hierarchy", "hierarchy_path", required=True, type=click.Path(path_type=Path),
              help="JSON {parent: [child, …]} over the store's class names (or attribute tasks).")
@_BY
@click.option("--classes", type=click.Path(path_type=Path), default=None,
              help="Class names of the labels [default: classes.json beside the tars].")
@click.option("--attributes", "attributes_csv", type=click.Path(path_type=Path), default=None,
              help="CSV of per-image attributes whose binary columns may be children too (as `analyze probe` reads it).")
@click.option("--attributes-json", default=None, help="Or these fields of each sample's .json in the store's tars.")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Folder now holding the store's tars [default: where the store says].")
@click.option("--sae", "sae_path", type=click.Path(path_type=Path), default=None,
              help="The SAE that made the codes [default: the folder encode recorded].")
def absorption_cmd(store_path, codes_name, out, quiet, hierarchy_path, by, classes, attributes_csv, attributes_json,
                   shards, sae_path):
    """SAEBench's feature absorption and splitting over a hierarchy of classes (absorption.csv)."""
    from clipsae.analysis.attributes import from_options
    from clipsae.analysis.commands import Target
    from clipsae.analysis.evaluation.absorption import run_absorption

    t = Target.open(store_path, codes_name, out, progress=not quiet)
    attrs = (from_options(t.store, attributes_csv, attributes_json, shards)
             if attributes_csv is not None or attributes_json is not None else None)
    for line in run_absorption(t, hierarchy_path, by, classes, shards, attrs, sae_path):
        click.echo(line)


@analyze_group.command("monosemanticity")
@_codes_options
@_BY
@_embed_hook("refused where the store has none")
@_DEVICE
def monosemanticity_cmd(store_path, codes_name, out, quiet, by, embed_hook, device):
    """Pach et al.'s monosemanticity score of each feature: how alike its images are (monosemanticity.csv, PNG)."""
    from clipsae.analysis.commands import run_monosemanticity

    _run(run_monosemanticity, store_path, codes_name, out, quiet, embed_hook, by, device)


@analyze_group.command("correlate")
@click.option("--a", "ref_a", required=True, metavar="STORE:CODES", help="Side A: a store and the name of its codes.")
@click.option("--b", "ref_b", required=True, metavar="STORE:CODES", help="Side B: a store and the name of its codes.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: <A store>/codes/<A codes>-analysis/correlate-<B>].")
@click.option("-k", "k", type=int, default=16, show_default=True, help="Top images per feature for the overlap.")
@_BY
@click.option("--min-hits", type=int, default=10, show_default=True,
              help="Shared images both features of a printed match must fire on.")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Folder now holding the stores' tars, for the top-images figure [default: where the stores say].")
@_DEVICE
def correlate_cmd(ref_a, ref_b, out, k, by, min_hits, shards, device):
    """Pearson correlation of every A feature with every B feature over the images both stores hold."""
    from clipsae.analysis.commands import parse_codes_ref, run_correlate
    from clipsae.analysis.features.top_images import check_k

    check_k(k)
    a, b = parse_codes_ref(ref_a, "--a"), parse_codes_ref(ref_b, "--b")
    for line in run_correlate(a, b, out, k, by, min_hits, shards, device):
        click.echo(line)


@analyze_group.command("universal")
@click.option("--codes", "refs", required=True, metavar="STORE:CODES,STORE:CODES[,…]",
              help="The codes each model's SAE of one universal run (models/<m>) made on its store, comma-separated.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: <first store>/codes/<first codes>-analysis/universal].")
@_BY
@click.option("--min-hits", type=int, default=10, show_default=True,
              help="Shared images a latent must fire on in every model to be drawn in universal_top_images.png.")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Folder now holding the stores' tars, for the top-images figure [default: where the stores say].")
@_DEVICE
def universal_cmd(refs, out, by, min_hits, shards, device):
    """Each latent of a universal SAE across its models: firing rates, co-firing, energy shares, universality, and
    the cross-model reconstruction matrix (universal.csv, universal.json, universal.png)."""
    from clipsae.analysis.commands import parse_codes_ref, run_universal

    parsed = [parse_codes_ref(x.strip(), "--codes") for x in refs.split(",")]
    for line in run_universal(parsed, out, by, device, shards, min_hits):
        click.echo(line)


@analyze_group.command("compare")
@click.option("--codes", "refs", required=True, multiple=True, metavar="STORE:CODES",
              help="Codes to compare, as a store and a codes name; repeat for each (layers of a store, or SAEs on a hook).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("compare"), show_default=True,
              help="Folder for compare.csv and compare.png.")
@_BY
@_MIN_HITS
@_embed_hook("left empty where a store has none")
@_DEVICE
def compare_cmd(refs, out, by, min_hits, embed_hook, device):
    """Fit, sparsity, label entropy and monosemanticity of several codes side by side (compare.csv, PNG by layer)."""
    from clipsae.analysis.commands import parse_codes_ref, run_compare

    for line in run_compare([parse_codes_ref(r, "--codes") for r in refs], out, by, min_hits, embed_hook, device):
        click.echo(line)


@analyze_group.command("neuron-alignment")
@_codes_options
@click.option("--sae", "sae_path", type=click.Path(path_type=Path), default=None,
              help="The SAE that made the codes [default: the folder encode recorded].")
@click.option("--model", default=None, help="open_clip model name [default: the store's].")
@click.option("--pretrained", default=None,
              help="Weights: open_clip tag, checkpoint file or hf-hub:org/repo [default: those the store was made with].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random baseline directions.")
def neuron_alignment_cmd(store_path, codes_name, out, quiet, sae_path, model, pretrained, seed):
    """Each SAE encoder direction's best |cosine| with an MLP neuron's output direction, against random ones."""
    from clipsae.analysis.commands import run_neuron_alignment

    _run(run_neuron_alignment, store_path, codes_name, out, quiet, sae_path, model, pretrained, seed)


@analyze_group.command("report")
@click.option("--store", "store_path", required=True, help="Activation store: a folder, s3://bucket/… or gs://bucket/….")
@click.option("--codes", "codes_name", required=True, help="Name of the cached codes (`clipsae encode --name`).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report folder [default: <store>/codes/<codes>-analysis/report].")
@click.option("-k", "k", type=int, default=12, show_default=True, help="Top images per feature page.")
@click.option("--per-interval", type=int, default=4, show_default=True,
              help="Random images from each lower activation interval per page.")
@click.option("--intervals", "n_intervals", type=int, default=4, show_default=True,
              help="Equal-width activation intervals between 0 and each feature's largest value.")
@click.option("--nearest", type=int, default=8, show_default=True, help="Nearest features by decoder cosine per page.")
@_BY
@_MIN_HITS
@click.option("--sae", "sae_path", type=click.Path(path_type=Path), default=None,
              help="The SAE that made the codes, for the neighbours and metrics [default: the folder encode recorded].")
@click.option("--shards", type=click.Path(path_type=Path), default=None,
              help="Folder now holding the store's tars [default: where the store says].")
@click.option("--classes", type=click.Path(path_type=Path), default=None,
              help="Class names: JSON list or {label: name}, or one name per line [default: classes.json beside the tars].")
@click.option("--thumb-size", type=int, default=160, show_default=True, help="Longest side of the thumbnails, pixels.")
@_embed_hook("left out where the store has none")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def report_cmd(store_path, codes_name, out, k, per_interval, n_intervals, nearest, by, min_hits, sae_path, shards,
               classes, thumb_size, embed_hook, quiet):
    """A static site to browse the features: index with plots and a table, one page per live feature."""
    from clipsae.analysis.report.build import ReportConfig, run_report

    cfg = ReportConfig(store_path, codes_name, out, k, per_interval, n_intervals, nearest, by, min_hits, thumb_size,
                       sae_path, shards, classes, embed_hook=embed_hook, progress=not quiet)
    for line in run_report(cfg):
        click.echo(line)


@analyze_group.command("name-features")
@_codes_options
@click.option("--vocab", type=click.Path(path_type=Path), default=None,
              help="Words, one per line (or a JSON list) [default: the store's class names from the classes.json "
                   "beside its tars, else the 1,000 ImageNet class names].")
@click.option("--words", "n_words", type=int, default=5, show_default=True, help="Best words kept per feature and method.")
@click.option("-k", "k", type=int, default=12, show_default=True, help="Top images whose mean embedding names a feature.")
@_BY
@_model_options
def name_features_cmd(store_path, codes_name, out, quiet, vocab, n_words, k, by, sae_path, model, pretrained, shards, device,
                      batch_size):
    """Name features by cosine with text embeddings of a vocabulary (names.csv)."""
    from clipsae.analysis.model.name_features import run_name_features

    _run(run_name_features, store_path, codes_name, out, quiet, vocab, n_words, k, by, sae_path, model, pretrained, shards,
         device, batch_size, not quiet)


@analyze_group.command("splice")
@_codes_options
@click.option("--images", "n_images", type=int, default=512, show_default=True,
              help="Images to run, spread evenly over the store.")
@click.option("--classes", type=click.Path(path_type=Path), default=None,
              help="Class names for zero-shot accuracy [default: classes.json beside the tars].")
@_model_options
def splice_cmd(store_path, codes_name, out, quiet, n_images, classes, sae_path, model, pretrained, shards, device,
               batch_size):
    """Replace the hook's activations by the SAE's reconstruction and compare the image embeddings (splice.json)."""
    from clipsae.analysis.model.splice import check_images, run_splice

    check_images(n_images)
    _run(run_splice, store_path, codes_name, out, quiet, n_images, sae_path, model, pretrained, shards, classes, device,
         batch_size, not quiet)
