"""``clipsae serve``: options in, the explorer served until Ctrl-C.

Only click is imported at module level, so that ``--help`` and option errors answer at once.
"""

import click

from clipsae.analysis.explore.config import ServeConfig
from clipsae.options import click_options


@click.command("serve")
@click_options(ServeConfig)
@click.option("--codes", "codes", multiple=True, required=True, metavar="NAME|STORE:NAME",
              help="Codes to serve (`clipsae encode --name`); repeat it to serve several side by side.")
def serve_cmd(codes, **options):
    """Explore codes live in a browser: features, images and their patches, steering, comparison, a game.

    Prints `serving http://HOST:PORT/` and serves until Ctrl-C.
    """
    from clipsae.analysis.explore.serve import run_serve

    given_token = options.get("token") is not None
    cfg = ServeConfig(codes=tuple(codes), **options)
    run_serve(cfg, echo=click.echo, print_token=not given_token and cfg.token is not None)
