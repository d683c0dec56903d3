import csv
import shutil

import numpy as np
import pytest
import torch

from clipsae.analysis.commands import Target, run_neuron_alignment
from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.analysis.model import neuron_alignment as na
from clipsae.pipeline.config import ModelConfig
from clipsae.pipeline.model import load_model
from clipsae.store.writer import write_store
from tests.analysis.helpers import sae_weights, saelens_dir

PLANTED = {0: 5, 1: 700, 2: 3071, 3: 1234}


@pytest.fixture(scope="module")
def vit_codes(tmp_path_factory):
    """A ViT-B-32 (random init, seed 0) resid.3 store; SAE features 0–3 read planted MLP neurons of block 3."""
    tmp = tmp_path_factory.mktemp("align")
    store = tmp / "s.zarr"
    acts = np.random.default_rng(0).standard_normal((6, 2, 768)).astype(np.float32)
    write_store(store, {"resid.3": acts}, [f"k{i}" for i in range(6)],
                attrs={"model": "ViT-B-32", "pretrained": "random-init(seed=0)"}, dtype="float32",
                layouts={"resid.3": {"cls_token": True, "grid": None}})
    c_proj = load_model(ModelConfig("ViT-B-32")).visual.transformer.resblocks[3].mlp.c_proj.weight.detach()
    g = torch.Generator().manual_seed(1)
    w_enc = torch.randn(768, 40, generator=g)
    for f, neuron in PLANTED.items():
        w_enc[:, f] = (-3.0 if f % 2 else 2.0) * c_proj[:, neuron]
    sae = saelens_dir(tmp / "sae", {"architecture": "standard"},
                      {"W_enc": w_enc, "b_enc": torch.zeros(40), "W_dec": torch.randn(40, 768, generator=g),
                       "b_dec": torch.zeros(768)})
    run_encode(EncodeConfig(store, sae, progress=False))
    return store, sae


def test_planted_neuron_directions_are_found_and_random_ones_are_not(vit_codes, tmp_path):
    lines = run_neuron_alignment(Target.open(vit_codes[0], "sae", tmp_path))
    with open(tmp_path / "neuron_alignment.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and list(rows[0]) == ["feature", "max_cos", "neuron", "above_random"]
    for f, neuron in PLANTED.items():
        assert int(rows[f]["neuron"]) == neuron and float(rows[f]["max_cos"]) == pytest.approx(1.0, abs=1e-5)
        assert rows[f]["above_random"] == "1"
    random_feats = [float(r["max_cos"]) for r in rows[len(PLANTED):]]
    assert max(random_feats) < 0.5
    above = sum(r["above_random"] == "1" for r in rows)
    assert f"{above} of 40 features above the random" in lines[1]
    assert (tmp_path / "neuron_alignment.png").stat().st_size > 0


def test_max_abs_cosine_equals_a_plain_computation(monkeypatch):
    g = torch.Generator().manual_seed(0)
    dirs, neurons = torch.randn(11, 6, generator=g), torch.randn(9, 6, generator=g)
    monkeypatch.setattr(na, "ROWS_PER_BLOCK", 4)
    best, arg = na.max_abs_cosine(dirs, neurons)
    d = dirs.numpy() / np.linalg.norm(dirs.numpy(), axis=1, keepdims=True)
    n = neurons.numpy() / np.linalg.norm(neurons.numpy(), axis=1, keepdims=True)
    cos = np.abs(d @ n.T)
    np.testing.assert_allclose(best, cos.max(1), rtol=1e-5)
    assert arg.tolist() == cos.argmax(1).tolist()


def test_a_moved_sae_is_found_through_sae_and_a_different_one_refused(vit_codes, tmp_path, run_cli):
    moved = tmp_path / "moved"
    shutil.copytree(vit_codes[1], moved)
    code, out, err = run_cli("analyze", "neuron-alignment", "--store", vit_codes[0], "--codes", "sae",
                             "--sae", moved, "--out", tmp_path / "o")
    assert code == 0, err
    other = saelens_dir(tmp_path / "other", {"architecture": "standard"}, sae_weights(0, d=768, n=40))
    code, out, err = run_cli("analyze", "neuron-alignment", "--store", vit_codes[0], "--codes", "sae",
                             "--sae", other, "--out", tmp_path / "o")
    assert code != 0 and "is not the one that made codes 'sae'" in err and len(err.strip().splitlines()) == 1


def test_codes_on_a_hook_other_than_the_residual_stream_are_refused(encoded, run_cli):
    code, out, err = run_cli("analyze", "neuron-alignment", "--store", encoded[0], "--codes", "sae")
    assert code != 0 and "residual-stream hook (resid.N)" in err and len(err.strip().splitlines()) == 1


def test_the_histogram_spans_the_cosines_not_zero_to_one():
    al = na.Alignment(torch.tensor([0.12, 0.19]).numpy(), np.zeros(2, dtype=np.int64), np.array([0.105, 0.15]))
    bins = na.alignment_bins(al)
    assert 0.1 < bins[0] <= 0.105 and 0.19 <= bins[-1] < 0.2 and len(bins) == 61
