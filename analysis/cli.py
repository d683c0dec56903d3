"""``clipsae encode`` and ``clipsae analyze …``: options in, one call to the analysis API out.

Only click is imported at module level, so that ``--help`` and option errors answer at once.
"""

from pathlib import Path

import click


@click.command("encode")
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path), help="Activation store.")
@click.option("--sae", "sae_path", required=True, type=click.Path(path_type=Path),
              help="A `clipsae train` SAE folder, or a SAELens or sparsify SAE folder.")
@click.option("--name", default=None, help="Name of the cached codes [default: the SAE folder's name].")
@click.option("--hook", default=None, help="Hook to encode [default: the SAE's, or the store's only hook of its width].")
@click.option("--tokens", type=click.Choice(["cls", "patches", "all"]), default=None,
              help="Tokens to encode [default: those the SAE was trained on, else all].")
@click.option("--max-active", type=int, default=None,
              help="Latents kept per token [default: k for TopK SAEs, else 64]; the count cut is reported.")
@click.option("--batch-size", type=int, default=8192, show_default=True, help="Token rows per SAE forward pass.")
@click.option("--device", default="auto", show_default=True, help="cuda, cuda:N, cpu, or auto (cuda when there is one).")
@click.option("--num-workers", type=int, default=None, help="Jobs sharing the store (default: SLURM_ARRAY_TASK_COUNT, else 1).")
@click.option("--worker-index", type=int, default=None, help="This job's index (default: SLURM_ARRAY_TASK_ID, else 0).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def encode_cmd(store_path, sae_path, name, hook, tokens, max_active, batch_size, device, num_workers, worker_index, quiet):
    """Encode a store's activations with an SAE and cache the codes in the store."""
    from clipsae.analysis.encode import EncodeConfig, run_encode

    cfg = EncodeConfig(store_path, sae_path, name, hook, tokens, device, batch_size, max_active, num_workers,
                       worker_index, progress=not quiet)
    r = run_encode(cfg)
    capped = f"; {r.tokens_capped} token rows had more active latents than the cap (see --max-active)" if r.tokens_capped else ""
    click.echo(f"encoded {r.images} images ({len(r.parts_written)} parts written, {len(r.parts_skipped)} already done) "
               f"of hook {r.hook} ({r.tokens} tokens) as codes {r.name!r} in {store_path}{capped}")
    click.echo(f"next: clipsae analyze top-images --store {store_path} --codes {r.name}")
