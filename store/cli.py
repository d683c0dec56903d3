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
@click.option("--verify", "check", is_flag=True,
              help="Also read every chunk against its checksum, as `store verify` does (exit 1 on a problem).")
def info_cmd(path, as_json, check):
    """Summarise a store: model, hooks, shapes, counts, statistics; with --verify, whether every chunk is intact."""
    from clipsae.store.info import format_summary, summarize
    from clipsae.store.integrity import verify
    from clipsae.store.reader import ActivationStore

    store = ActivationStore.open(path)
    s = summarize(store)
    report = verify(store) if check else None
    if report is not None:
        s["integrity"] = {"checked": True, "problems": report.problems}
    click.echo(json.dumps(s, indent=2) if as_json else format_summary(s))
    if report is not None and not report.ok:
        raise _damaged(path, report)


@store_group.command("verify")
@click.argument("path")
def verify_cmd(path):
    """Read every complete part; exit non-zero if any is inconsistent or holds non-finite values."""
    from clipsae.store.integrity import verify
    from clipsae.store.reader import ActivationStore

    store = ActivationStore.open(path)
    report = verify(store)
    for line in report.checked:
        click.echo(f"checked {line}")
    for name in report.incomplete:
        click.echo(f"note: part {name} is incomplete (a rerun of extract rewrites it)")
    if report.unchecksummed:
        click.echo(f"note: {len(report.unchecksummed)} part(s) written before store format 2 carry no chunk "
                   "checksums; their chunks were checked for presence and size only")
    if not report.ok:
        for p in report.problems:
            click.echo(f"problem: {p}")
        raise _damaged(path, report)
    codes = [line.split(":")[0] for line in report.checked if line.startswith("codes ")]
    click.echo(f"ok: {len(store.parts)} parts, {store.n_images} images, hooks {', '.join(store.hooks)}"
               + "".join(f"; {c}" for c in codes))


def _damaged(path: str, report) -> ClipsaeError:
    """The one-line refusal of a store that verify found damaged: how many problems, the first, and the fixes."""
    return ClipsaeError(f"{path}: {len(report.problems)} problem(s); first: {report.problems[0]}. "
                        f"{'; '.join(_fixes(path, report))}")


def _fixes(path: str, report) -> list[str]:
    """How to rebuild what is damaged: an activation part by rerunning extract, a codes part by
    rerunning encode; deleting a damaged part first makes the rerun rewrite it."""
    fixes = []
    if report.damaged_parts:
        fixes.append(f"to rebuild activations, delete {path}/parts/<part> for part(s) "
                     f"{', '.join(sorted(report.damaged_parts))} and rerun the extract command that made the store")
    for name, parts in sorted(report.damaged_codes.items()):
        fixes.append(f"to rebuild codes {name!r}, delete {path}/codes/{name}/parts/<part> for part(s) "
                     f"{', '.join(sorted(parts))} and rerun the encode command with --name {name}")
    if not fixes:
        fixes.append("keys repeated across parts mean two tars hold the same images: remove one and re-extract")
    return fixes
