"""``clipsae sae …``: what an SAE is, and how two SAEs' dictionaries compare.

It sits at the top of the import graph because ``sae compare`` is an analysis of SAE models
(analysis/) while ``sae info`` reads what training saved (train/).
"""

import json
from pathlib import Path

import click

from clipsae.train.formats import SAE_FORMAT, SAE_OPTIONS_HELP, names


@click.group("sae")
def sae_group():
    """Inspect SAEs: clipsae's and those other tools published."""


@sae_group.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@SAE_FORMAT
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def sae_info_cmd(path, sae_format, sae_options, as_json):
    """What the SAE at PATH is (clipsae, SAELens, sparsify, dictionary_learning, ViT-Prisma, saev, CLIP-Scope, MSAE,
    overcomplete), and
    its held-out metrics; for a sweep's run folder, one line per SAE it holds."""
    from clipsae.train.formats import detect
    from clipsae.train.report import format_sae_info, format_sweep_info, sae_info, sweep_info

    if sae_format is None and path.is_dir() and not _is_one_sae(path, detect):
        infos = sweep_info(path)
        if infos:
            click.echo(json.dumps(infos, indent=2) if as_json else format_sweep_info(infos))
            return
    info = sae_info(path, sae_format, sae_options)
    click.echo(json.dumps(info, indent=2) if as_json else format_sae_info(info))


def _is_one_sae(path: Path, detect) -> bool:
    from clipsae.errors import ClipsaeError

    try:
        detect(path)
    except ClipsaeError:
        return False
    return True


@sae_group.command("compare")
@click.argument("sae_a", type=click.Path(path_type=Path))
@click.argument("sae_b", type=click.Path(path_type=Path))
@click.option("--format-a", type=click.Choice(names()), default=None, help="A's format [default: detected].")
@click.option("--format-b", type=click.Choice(names()), default=None, help="B's format [default: detected].")
@click.option("--options-a", default=None, metavar="KEY=VALUE,…", help="A's --sae-options. " + SAE_OPTIONS_HELP)
@click.option("--options-b", default=None, metavar="KEY=VALUE,…", help="B's --sae-options.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("sae-compare"), show_default=True,
              help="Folder for sae_compare.csv, sae_compare.json and sae_compare.png.")
@click.option("--max-matching", type=click.IntRange(min=1), default=None,
              help="Largest SAE (latents a side) given the one-to-one matching [default: 16,384].")
@click.option("--device", default="auto", show_default=True, help="cuda, cuda:N, cpu, or auto.")
def sae_compare_cmd(sae_a, sae_b, format_a, format_b, options_a, options_b, out, max_matching, device):
    """Match SAE_A's decoder directions among SAE_B's: best cosine each, a one-to-one Hungarian matching,
    the shares above 0.5, 0.7 and 0.9 (two seeds, two architectures, ours against a published SAE)."""
    from clipsae.analysis.commands import run_sae_compare

    for line in run_sae_compare(sae_a, sae_b, out, format_a, format_b, device, max_matching, options_a, options_b):
        click.echo(line)
