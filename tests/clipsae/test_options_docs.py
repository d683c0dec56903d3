"""Each command's options table in docs/commands.md is the one its option fields make, and every field has its help."""

import pytest

from clipsae import options
from clipsae.analysis.encode_config import EncodeConfig
from clipsae.analysis.explore.config import ServeConfig
from clipsae.pipeline.config import ExtractConfig, ModelConfig
from clipsae.train.config import RunSettings
from clipsae.train.request import TrainRequest
from tests.conftest import ROOT

COMMANDS = {"extract": (ModelConfig, ExtractConfig), "encode": (EncodeConfig,), "train": (TrainRequest, RunSettings),
            "serve": (ServeConfig,)}


@pytest.mark.parametrize("command", COMMANDS)
def test_the_options_table_in_the_docs_is_the_one_the_fields_make(command):
    text = (ROOT / "docs" / "commands.md").read_text()
    table = text[text.index(f"## `clipsae {command}` options"):].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `--")]
    generated = [row for cls in COMMANDS[command] for row in options.markdown_rows(cls)]
    assert rows[:len(generated)] == generated, (f"docs/commands.md's {command} table differs from the option fields; "
                                                f"its rows should read:\n" + "\n".join(generated))


@pytest.mark.parametrize("cls", [cls for classes in COMMANDS.values() for cls in classes], ids=lambda c: c.__name__)
def test_every_option_field_has_a_docstring(cls):
    docs = options.docstrings(cls)
    assert [f.name for f in options.cli_fields(cls) if not docs.get(f.name)] == []


def test_the_renamed_options_table_lists_every_rename():
    import clipsae.analysis.cli  # noqa: F401 (each command module registers its renames)
    import clipsae.pipeline.cli  # noqa: F401

    text = (ROOT / "docs" / "commands.md").read_text()
    table = text[text.index("## Renamed options"):].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `clipsae")]
    assert rows == options.rename_rows(), "docs/commands.md's renamed options should read:\n" + "\n".join(options.rename_rows())
