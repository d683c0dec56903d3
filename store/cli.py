"""``clipsae store info|verify``."""

import json

import click

from clipsae.errors import ClipsaeError


@click.group("store")
def store_group():
    """Inspect and check an activation store."""


@store_group.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_cmd(path, as_json):
    """Summarise a store: model, hooks, shapes, counts, statistics."""
    from clipsae.store.info import format_summary, summarize
    from clipsae.store.reader import ActivationStore

    s = summarize(ActivationStore.open(path))
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))


@store_group.command("verify")
@click.argument("path")
def verify_cmd(path):
    """Read every complete part; exit non-zero if any is inconsistent or holds non-finite values."""
    from clipsae.store.reader import ActivationStore
    from clipsae.store.integrity import verify

    store = ActivationStore.open(path)
    report = verify(store)
    for name in report.incomplete:
        click.echo(f"note: part {name} is incomplete (a rerun of extract rewrites it)")
    if report.unchecksummed:
        click.echo(f"note: {len(report.unchecksummed)} part(s) written before store format 2 carry no chunk "
                   "checksums; their chunks were checked for presence and size only")
    if not report.ok:
        for p in report.problems:
            click.echo(f"problem: {p}")
        raise ClipsaeError(f"{path}: {len(report.problems)} problem(s); first: {report.problems[0]}. To rebuild a "
                           f"damaged part, delete {path}/parts/<part> and rerun the extract command that made the store")
    click.echo(f"ok: {len(store.parts)} parts, {store.n_images} images, hooks {', '.join(store.hooks)}")
