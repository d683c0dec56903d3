"""Options declared once: each field of TrainRequest and RunSettings is the option, its help, default,
check, identity and docs row."""

from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from clipsae import options
from clipsae.errors import ClipsaeError
from clipsae.options import check, option


@dataclass(frozen=True)
class Toy:
    count: int = option(3, at_least=1, identity=True)
    """How many, at least one."""
    name: str | None = option(None, shown_default="the store's")
    """A name."""

    def __post_init__(self):
        check(self)


def test_a_field_is_an_option_with_its_help_default_and_check():
    @click.command()
    @options.click_options(Toy)
    def cmd(**kw):
        click.echo(repr(Toy(**kw)))

    runner = CliRunner()
    assert "Toy(count=3, name=None)" in runner.invoke(cmd, []).output
    assert "Toy(count=5, name='x')" in runner.invoke(cmd, ["--count", "5", "--name", "x"]).output
    help_text = runner.invoke(cmd, ["--help"]).output
    assert "How many, at least one." in help_text and "[default: the store's]" in " ".join(help_text.split())
    with pytest.raises(ClipsaeError, match="--count must be at least 1, not 0"):
        Toy(count=0)
    assert options.identity(Toy(count=2)) == {"count": 2}
    assert options.markdown_rows(Toy) == ["| `--count` | 3 | How many, at least one. |",
                                          "| `--name` | the store's | A name. |"]


def test_a_runs_identity_keeps_its_keys_and_their_order():
    from pathlib import Path

    from clipsae.train.config import TrainConfig
    from clipsae.train.spec import SAESpec

    cfg = TrainConfig(store=Path("s"), hook="h", tokens="all", out=Path("o"), saes=(SAESpec("topk", 4, 2, k=2),),
                      steps=10, precision="fp32")
    assert list(cfg.identity()) == ["store", "store_images", "hook", "tokens", "saes", "steps", "batch_size", "lr",
                                    "precision", "seed", "holdout", "warmup_steps", "decay_fraction", "clip",
                                    "dead_tokens", "resample_every", "buffer_rows", "scale_rows"]
