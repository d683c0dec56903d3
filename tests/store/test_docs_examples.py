"""docs/store.md's "with zarr alone" examples run as written and read what clipsae reads."""

import re

import numpy as np

from tests.conftest import ROOT


def _blocks_after(heading_text: str) -> list[str]:
    """The python code blocks of docs/store.md from the line ``heading_text`` to the next heading."""
    text = (ROOT / "docs" / "store.md").read_text()
    start = text.index(heading_text)
    end = text.find("\n#", start + len(heading_text))
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def test_the_zarr_only_examples_read_what_clipsae_reads(tmp_path, monkeypatch):
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.store.codes import Codes
    from clipsae.store.reader import ActivationStore
    from clipsae.store.writer import write_store
    from tests.analysis.helpers import sae_weights, saelens_dir

    rng = np.random.default_rng(0)
    for p in range(2):
        write_store(tmp_path / "acts.zarr", {"resid.22": rng.standard_normal((5, 3, 8)).astype(np.float32)},
                    [f"k{p}{i}" for i in range(5)], attrs={"model": "m"}, part=f"{p:05d}")
    run_encode(EncodeConfig(tmp_path / "acts.zarr", saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 3},
                                                                 sae_weights(0)), name="topk-resid.22", progress=False))
    monkeypatch.chdir(tmp_path)
    store = ActivationStore.open(tmp_path / "acts.zarr")

    (acts_block,) = _blocks_after("## Reading with zarr alone")
    scope: dict = {}
    exec(acts_block, scope)
    assert scope["keys"] == [str(k) for k in store.keys()]
    np.testing.assert_array_equal(scope["acts"], store.read("resid.22", slice(None)))

    (codes_block,) = _blocks_after("Reading them with zarr alone:")
    scope = {}
    exec(codes_block, scope)
    latents, values = Codes(store, "topk-resid.22").image_values(3)
    np.testing.assert_array_equal(scope["latents"][scope["maxima"] > 0], latents)
    np.testing.assert_array_equal(scope["maxima"][scope["maxima"] > 0], values)
