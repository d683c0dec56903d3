import json

import numpy as np
import pytest
import torch

from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.analysis.model.splice import reconstruct, spliced_embeddings
from clipsae.pipeline.config import ExtractConfig, ModelConfig
from clipsae.pipeline.extract import run_extract
from clipsae.pipeline.model import load_model
from clipsae.train.model import SparseAutoencoder
from tests.analysis.helpers import sae_weights, saelens_dir

D = 768


def identity_sae(path):
    """A ReLU SAE that reconstructs exactly: x = ReLU(x) − ReLU(−x)."""
    eye = torch.eye(D)
    return saelens_dir(path, {"architecture": "standard"},
                       {"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * D),
                        "W_dec": torch.cat([eye, -eye], 0), "b_dec": torch.zeros(D)})


@pytest.fixture(scope="module")
def extracted(shards, tmp_path_factory):
    """ViT-B-32 (random weights) resid.5 (all tokens) and embed over the 18 synthetic images, in 2 tars of 3."""
    store = tmp_path_factory.mktemp("splice") / "s.zarr"
    run_extract(ExtractConfig(model=ModelConfig("ViT-B-32"), layers=["5", "embed"], tokens="all",
                              shards=str(shards), store=str(store), batch_size=8, progress=False))
    return store


@pytest.fixture(scope="module")
def vit():
    return load_model(ModelConfig("ViT-B-32")).visual


def manual_splice(visual, images, block, positions, fn):
    """The tower's forward written out, with tokens ``positions`` after ``block`` replaced by fn(x)."""
    x = visual._embeds(images)
    for i, b in enumerate(visual.transformer.resblocks):
        x = b(x)
        if i == block:
            x = x.clone()
            x[:, positions] = fn(x[:, positions])
    pooled, _ = visual._pool(x)
    return pooled @ visual.proj


def test_spliced_embedding_equals_the_forward_with_the_reconstruction_written_in(vit):
    w = sae_weights(0, d=D, n=64)
    sae = SparseAutoencoder("topk", w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"], k=8)
    images = torch.randn(2, 3, 224, 224)
    positions = np.array([0, 3, 7])
    mean = torch.randn(len(positions), D)
    o, s, m, z = spliced_embeddings(vit, "resid.5", positions, sae, mean, images)
    with torch.no_grad():
        assert torch.allclose(o, vit(images), atol=1e-5)
        assert torch.allclose(s, manual_splice(vit, images, 5, positions, lambda x: reconstruct(sae, x)), atol=1e-4)
        assert torch.allclose(m, manual_splice(vit, images, 5, positions, lambda x: mean.expand_as(x)), atol=1e-4)
        assert torch.allclose(z, manual_splice(vit, images, 5, positions, torch.zeros_like), atol=1e-4)
        assert not torch.allclose(o, s, atol=1e-3)


def test_an_exact_sae_spliced_in_changes_nothing(extracted, tmp_path, run_cli):
    run_encode(EncodeConfig(extracted, identity_sae(tmp_path / "exact"), hook="resid.5", progress=False))
    code, out, err = run_cli("analyze", "splice", "--store", extracted, "--codes", "exact", "--images", "6", "--quiet")
    assert code == 0, err
    res = json.loads((extracted / "codes" / "exact-analysis" / "splice.json").read_text())
    assert res["images"] == 6 and res["tokens_replaced"] == 50
    assert res["random_weights"] and res["summary"].startswith("random weights: ")
    assert "warning: the model has random weights" in out
    assert res["cosine_spliced"]["min"] > 0.9999
    assert res["cosine_mean_ablated"]["mean"] < 0.999
    assert res["zero_shot"]["agreement"] == 1.0 and res["zero_shot"]["classes"] == 12
    assert res["zero_shot"]["accuracy_original"] == res["zero_shot"]["accuracy_spliced"]
    assert "cos(original, spliced)" in out
    zs = res["zero_shot"]
    assert zs["ce_recovered"] == pytest.approx(1, abs=1e-3) and zs["ce_recovered_mean"] == pytest.approx(1, abs=1e-3)
    assert abs(zs["kl"]) < 1e-6 and zs["ce_sae"] == pytest.approx(zs["ce_clean"], abs=1e-5)
    assert zs["ce_zero"] != pytest.approx(zs["ce_clean"], abs=1e-3)


def test_an_sae_whose_decoder_outputs_zeros_recovers_nothing(extracted, tmp_path, run_cli):
    w = {"W_enc": torch.eye(D)[:, :16].contiguous(), "b_enc": torch.zeros(16), "W_dec": torch.zeros(16, D), "b_dec": torch.zeros(D)}
    run_encode(EncodeConfig(extracted, saelens_dir(tmp_path / "zero", {"architecture": "standard"}, w),
                            hook="resid.5", name="zero", progress=False))
    code, out, err = run_cli("analyze", "splice", "--store", extracted, "--codes", "zero", "--images", "6", "--quiet")
    assert code == 0, err
    zs = json.loads((extracted / "codes" / "zero-analysis" / "splice.json").read_text())["zero_shot"]
    assert zs["ce_recovered"] == 0.0 and zs["ce_sae"] == zs["ce_zero"] and zs["kl"] > 0
    # By hand: the cross-entropy of the true class from the same four numbers the file reports.
    assert zs["ce_recovered_mean"] == pytest.approx((zs["ce_mean"] - zs["ce_sae"]) / (zs["ce_mean"] - zs["ce_clean"]))
    assert "CE recovered 0.0000 (against zeros)" in out


def test_pooled_embed_codes_are_spliced_on_the_embedding(extracted, tmp_path, run_cli):
    sae = saelens_dir(tmp_path / "e", {"architecture": "topk", "k": 4}, sae_weights(2, d=512, n=64))
    run_encode(EncodeConfig(extracted, sae, hook="embed", progress=False))
    code, _, err = run_cli("analyze", "splice", "--store", extracted, "--codes", "e", "--images", "3", "--quiet")
    assert code == 0, err
    res = json.loads((extracted / "codes" / "e-analysis" / "splice.json").read_text())
    assert res["tokens_replaced"] == 1 and res["cosine_spliced"]["mean"] < 0.9999


def test_an_sae_worse_than_the_mean_is_said_so(extracted, tmp_path, run_cli):
    # Reconstructs −x: far worse than putting each token's mean in its place.
    eye = torch.eye(D)
    sae = saelens_dir(tmp_path / "neg", {"architecture": "standard"},
                      {"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * D),
                       "W_dec": -torch.cat([eye, -eye], 0), "b_dec": torch.zeros(D)})
    run_encode(EncodeConfig(extracted, sae, name="neg", hook="resid.5", progress=False))
    code, out, err = run_cli("analyze", "splice", "--store", extracted, "--codes", "neg", "--images", "3", "--quiet")
    assert code == 0, err
    res = json.loads((extracted / "codes" / "neg-analysis" / "splice.json").read_text())
    assert res["recovered"] < 0 and "worse than replacing the tokens by their mean" in res["summary"]


def test_splice_bad_input_is_one_line(extracted, tmp_path, run_cli):
    code, _, err = run_cli("analyze", "splice", "--store", extracted, "--codes", "nope", "--images", "3")
    assert code != 0 and "no codes named 'nope'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("analyze", "splice", "--store", extracted, "--codes", "any", "--images", "0")
    assert code != 0 and "--images must be at least 1" in err


def test_a_second_splice_on_the_hook_reuses_the_reference_and_reports_what_a_fresh_one_does(extracted, tmp_path, run_cli):
    from clipsae.analysis.model import splice

    for name, seed in (("r1", 3), ("r2", 4)):
        sae = saelens_dir(tmp_path / name, {"architecture": "topk", "k": 8}, sae_weights(seed, d=D, n=64))
        run_encode(EncodeConfig(extracted, sae, name=name, hook="resid.5", progress=False))
    args = ("--store", extracted, "--images", "6", "--quiet")
    assert run_cli("analyze", "splice", "--codes", "r1", *args)[0] == 0
    held = next(iter(splice._REFERENCE.values()))
    assert run_cli("analyze", "splice", "--codes", "r2", *args)[0] == 0
    assert next(iter(splice._REFERENCE.values())) is held  # the reference forwards were reused
    reused = json.loads((extracted / "codes" / "r2-analysis" / "splice.json").read_text())
    splice._REFERENCE.clear()
    assert run_cli("analyze", "splice", "--codes", "r2", *args)[0] == 0
    fresh = json.loads((extracted / "codes" / "r2-analysis" / "splice.json").read_text())
    assert reused["cosine_spliced"] == pytest.approx(fresh["cosine_spliced"], rel=1e-6)
    numbers = {k: v for k, v in fresh["zero_shot"].items() if isinstance(v, float)}
    assert numbers and {k: reused["zero_shot"][k] for k in numbers} == pytest.approx(numbers, rel=1e-6)
