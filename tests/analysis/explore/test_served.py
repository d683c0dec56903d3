"""Pieces of the served codes that need no server."""

import numpy as np

from clipsae.analysis.explore.served import KeyIndex


def test_key_index_finds_every_key_and_no_other():
    keys = np.array(["b/002", "a/001", "ü-key", "a/010", "c"])
    index = KeyIndex(keys)
    assert [index.find(str(k)) for k in keys] == list(range(len(keys)))
    assert index.find("a/00") is None and index.find("zz") is None and index.find("") is None
