"""docs/store.md is the normative description of the format: the tables there and the code's declarations agree."""

import dataclasses
import re
from pathlib import Path

from clipsae.store import parts
from clipsae.store.codes import (
    COUNT_ARRAYS,
    IMAGE_ARRAYS,
    LATENT_ARRAYS,
    PART_ARRAYS,
    POSITION_ARRAYS,
    TOKEN_ARRAYS,
    CodesBlock,
    PartSums,
)

STORE_MD = Path(__file__).resolve().parents[2] / "docs" / "store.md"


def _table_after(heading: str) -> list[list[str]]:
    """The rows (cells stripped of backticks) of the first table in the section ``heading``."""
    section = STORE_MD.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip().strip("`") for c in r.strip("|").split("|")] for r in rows[2:]]


def test_the_codes_table_lists_every_array_with_its_shape_and_dtype():
    documented = {name: (dtype, shape) for name, shape, dtype, _ in _table_after("Codes")}
    assert documented == {name: (dtype, shape) for name, (dtype, shape) in PART_ARRAYS.items()}


def test_the_codes_containers_hold_the_declared_arrays():
    block = [re.sub(r"_[A-Z]+$", "", f.name) for f in dataclasses.fields(CodesBlock)]
    assert block == [*TOKEN_ARRAYS, *COUNT_ARRAYS, *IMAGE_ARRAYS]
    sums = [f.name for f in dataclasses.fields(PartSums)][: len(LATENT_ARRAYS) + len(POSITION_ARRAYS)]
    assert sums == [*LATENT_ARRAYS, *POSITION_ARRAYS]


def test_the_part_states_are_those_documented():
    documented = [row[0] for row in _table_after("Groups written in parts")]
    assert documented == [parts.COMPLETE, parts.IN_PROGRESS, parts.INTERRUPTED, parts.DAMAGED]
