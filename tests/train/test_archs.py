"""The architecture registry: one module per architecture, found by its file name."""

import pkgutil
from pathlib import Path

import pytest

from clipsae.errors import ClipsaeError
from clipsae.train import archs

ARCH_DIR = Path(archs.__file__).parent


def test_exactly_the_modules_that_define_an_architecture_are_registered_under_their_file_names():
    import importlib

    from clipsae.train.archs.base import Architecture

    defining = {m.name for m in pkgutil.iter_modules([str(ARCH_DIR)])
                if isinstance(getattr(importlib.import_module(f"clipsae.train.archs.{m.name}"), "ARCH", None),
                              Architecture)}
    assert set(archs.names()) == defining == {"relu", "topk", "batchtopk", "matryoshka", "jumprelu", "gated", "mp",
                                                "archetypal", "archetypal_jumprelu", "pca", "kmeans", "nmf", "random"}
    for name in archs.names():
        assert archs.get(name).name == name


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ClipsaeError, match="--arch 'sparsemax' is not one of archetypal, archetypal_jumprelu, batchtopk, gated, jumprelu, kmeans, "
                                           "matryoshka, mp, nmf, pca, random, relu, topk"):
        archs.get("sparsemax")


@pytest.mark.parametrize("name, export_as", [("relu", "standard"), ("topk", "topk"), ("batchtopk", "jumprelu"),
                                             ("matryoshka", "jumprelu"), ("jumprelu", "jumprelu"), ("gated", "jumprelu"),
                                             ("mp", "mp"), ("archetypal", "topk"), ("archetypal_jumprelu", "jumprelu"),
                                             ("pca", "topk_magnitude"), ("kmeans", "onehot"),
                                             ("nmf", "seminmf"), ("random", "topk")])
def test_each_architecture_says_how_it_is_saved(name, export_as):
    assert archs.get(name).export_as == export_as


def test_specs_drop_options_their_architecture_ignores():
    relu = archs.get("relu").spec(8, 2, k=32, l1=3.0, matryoshka_weighting="rw")
    topk = archs.get("topk").spec(8, 2, k=4, l1=3.0, matryoshka_weighting="rw")
    assert (relu.k, relu.l1, relu.matryoshka_weighting) == (0, 3.0, "uw")
    assert (topk.k, topk.l1, topk.matryoshka_weighting) == (4, 0.0, "uw")
    assert archs.get("matryoshka").spec(8, 2, k=4, l1=0, matryoshka_weighting="rw").matryoshka_weighting == "rw"
    assert (relu.label, topk.label) == ("relu-x2-l1_3", "topk-x2-k4")
