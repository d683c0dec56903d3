"""The ``clipsae`` command: one click group; each stage contributes its subcommands.

The top of the import graph. A subcommand's module is imported only when that command runs
(torch and open_clip take seconds to import), so ``clipsae --help`` and option errors are instant.
"""

import errno
import importlib
import os
import sys

import click

from clipsae.errors import ClipsaeError

# name: (module, attribute, one-line help shown by `clipsae --help`)
COMMANDS = {
    "extract": ("clipsae.pipeline.cli", "extract_cmd", "Run a CLIP vision tower over webdataset tars and store per-token activations."),
    "shards": ("clipsae.pipeline.cli", "shards_group", "Make webdataset tars."),
    "store": ("clipsae.store.cli", "store_group", "Inspect and check an activation store."),
    "status": ("clipsae.cli.status", "status_cmd", "Which parts of a store and its codes are complete, in progress or missing."),
    "train": ("clipsae.train.cli", "train_cmd", "Train sparse autoencoders on one hook of an activation store."),
    "sae": ("clipsae.cli.sae", "sae_group", "Inspect SAEs and compare two dictionaries."),
    "encode": ("clipsae.analysis.cli", "encode_cmd", "Encode a store with an SAE and cache the codes in the store."),
    "analyze": ("clipsae.analysis.cli", "analyze_group", "Statistics, tables and plots from cached codes."),
    "serve": ("clipsae.analysis.explore.cli", "serve_cmd", "Explore codes live in a browser: features, patches, steering."),
    "demo": ("clipsae.cli.demo", "demo_cmd", "The whole pipeline on built-in synthetic data."),
}

EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 2
EXIT_INTERRUPTED = 130


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used, with their help listed from a table."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clipsae", prog_name="clipsae", message="%(prog)s %(version)s")
def cli():
    """Sparse autoencoders on CLIP vision activations: extract, train, analyse."""


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def _fail(message: str, code: int = EXIT_BAD_INPUT):
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def main() -> None:
    """Entry point: every failure is one line on stderr and a non-zero exit, never a traceback.

    Exit status: 1 bad input or environment (options included), 2 internal error, 130 interrupted.
    """
    try:
        rc = cli.main(prog_name="clipsae", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort; every long command resumes where it stopped.
        click.echo("interrupted; rerun the same command to continue", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.NoArgsIsHelpError as exc:
        # A group named with no subcommand: its help, as `--help` prints it, is the answer.
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _fail(exc.format_message() + where)
    except click.ClickException as exc:
        _fail(exc.format_message())
    except ClipsaeError as exc:
        _fail(str(exc))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            _fail(f"disk full ({exc}); complete store parts and the last training checkpoint are intact; "
                  "rerun after freeing space")
        detail = exc.strerror or str(exc)
        _fail(f"{detail}: {exc.filename}" if exc.filename else detail)
    except Exception as exc:
        if os.environ.get("CLIPSAE_DEBUG"):
            raise
        _fail(f"internal error {type(exc).__name__}: {exc} (set CLIPSAE_DEBUG=1 for the traceback)", EXIT_INTERNAL)
    sys.exit(rc if isinstance(rc, int) else 0)
