"""The ``clipsae`` command: one click group; each stage contributes its subcommands."""

import errno
import os
import sys

import click

from clipsae.errors import ClipsaeError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli():
    """Sparse autoencoders on CLIP vision activations: extract, train, analyse."""


def _register() -> None:
    # Imported here so that `clipsae --help` and the error handling stay importable
    # even while a stage's heavy imports (torch, open_clip) are loading.
    from clipsae.demo import demo_cmd
    from pipeline.cli import extract_cmd, shards_group
    from store.cli import store_group
    from train.cli import sae_group, train_cmd

    for cmd in (extract_cmd, shards_group, store_group, train_cmd, sae_group, demo_cmd):
        cli.add_command(cmd)


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 1, never a traceback."""
    _register()
    try:
        rc = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClipsaeError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to continue", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            click.echo(f"error: disk full ({_one_line(exc)}); complete store parts and the last training checkpoint are intact; rerun after freeing space", err=True)
        else:
            click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:
        if os.environ.get("CLIPSAE_DEBUG"):
            raise
        click.echo(
            f"error: internal error {type(exc).__name__}: {_one_line(exc)} (set CLIPSAE_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)
