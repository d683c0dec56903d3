"""``clipsae status``: which parts of a store and of its cached codes are complete, in progress or missing."""

import json

import click


@click.command("status")
@click.option("--store", "store_path", required=True, help="Activation store: a folder, s3://… or gs://….")
@click.option("--shards", default=None,
              help="The tars the store should hold (as given to extract) [default: the plan recorded by --slurm-array].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status_cmd(store_path, shards, as_json):
    """Where the work on a store stands, across all the jobs writing it.

    A part is complete once its marker is written; a part begun without its marker is in progress
    (or interrupted, when its writer's process on this host is gone); a planned part not begun is missing.
    """
    from clipsae.errors import ClipsaeError
    from clipsae.store import zarr_backend as zb
    from clipsae.store.location import check_reachable
    from clipsae.store.location import store_path as location
    from clipsae.store.status import format_status, store_status

    store_path = location(store_path)
    check_reachable(store_path)
    if not zb.is_node(store_path):
        raise ClipsaeError(f"{store_path} is not a store (no zarr.json); nothing has been extracted there yet")
    expected = None
    if shards is not None:
        from clipsae.pipeline.shards import expand_shards, name_parts

        expected = [s.part for s in name_parts(expand_shards(shards))]
    s = store_status(store_path, expected)
    click.echo(json.dumps(s, indent=2) if as_json else format_status(s))
