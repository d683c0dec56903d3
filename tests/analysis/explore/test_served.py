"""Pieces of the served codes that need no server."""

import numpy as np

from clipsae.analysis.explore.served import KeyIndex


def test_key_index_finds_every_key_and_no_other():
    keys = np.array(["b/002", "a/001", "ü-key", "a/010", "c"])
    index = KeyIndex(keys)
    assert [index.find(str(k)) for k in keys] == list(range(len(keys)))
    assert index.find("a/00") is None and index.find("zz") is None and index.find("") is None


def test_preload_loads_the_model_on_a_thread_and_leaves_a_failure_to_the_request(vit_encoded, tmp_path):
    import shutil

    import pytest

    from clipsae.analysis.explore.served import ServedCodes
    from clipsae.errors import ClipsaeError

    store, sae = vit_encoded
    served = ServedCodes("l3", store, "l3", "cpu", progress=False)
    assert not served.live.loaded
    served.live.preload().join(300)
    assert served.live.loaded
    # Without its SAE folder the load fails on the thread; the first request that needs the model says why.
    moved = tmp_path / "moved"
    shutil.copytree(store, moved / "s.zarr")
    shutil.rmtree(moved / "s.zarr" / "codes" / "emb-analysis", ignore_errors=True)
    orphan = ServedCodes("emb", moved / "s.zarr", "emb", "cpu", progress=False)
    sae_emb = sae.parent / "sae-emb"
    hidden = sae.parent / "sae-emb-hidden"
    sae_emb.rename(hidden)
    try:
        orphan.live.preload().join(300)
        assert not orphan.live.loaded
        with pytest.raises(ClipsaeError, match="not there now"):
            orphan.live.text_scores("a cat")
    finally:
        hidden.rename(sae_emb)
