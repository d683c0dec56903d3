"""dictionary_learning folders load and code as each dict_class's own encode and decode do."""

import json

import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.train import load_sae

D, N, K = 10, 32, 3


def _g(seed):
    return torch.Generator().manual_seed(seed)


def state_dict(dict_class, seed=0):
    """The state dict each class saves (its parameter and buffer names and shapes), random weights."""
    g = _g(seed)
    enc_w, enc_b = torch.randn(N, D, generator=g) / D**0.5, torch.randn(N, generator=g) * 0.1
    dec_w = torch.randn(D, N, generator=g) * 0.8  # nn.Linear(dict, act).weight: (D, N), columns not unit norm
    b = torch.randn(D, generator=g) * 0.2
    if dict_class == "AutoEncoderNew":  # two nn.Linear, each with its bias
        return {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "decoder.bias": b}
    if dict_class == "AutoEncoder":
        return {"bias": b, "encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.15), "decoder.weight": dec_w,
                "encoder.weight": enc_w, "encoder.bias": enc_b, "b_dec": b}
    common = {"W_enc": enc_w.T.contiguous(), "b_enc": enc_b, "W_dec": dec_w.T.contiguous(), "b_dec": b}
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.15),
                "group_sizes": torch.tensor([8, 8, 16]), **common}
    return {**common, "threshold": torch.linspace(0.0, 0.4, N)}  # JumpReluAutoEncoder


def folder(path, dict_class, w):
    path.mkdir()
    torch.save(w, path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, "activation_dim": D,
                                                              "dict_size": N, "layer": 22}, "buffer": {}}))
    return path


def reference(dict_class, w, x):
    """(codes, reconstruction) as the class's encode and decode compute them (after from_pretrained)."""
    relu = torch.relu
    if dict_class == "AutoEncoder":
        norms = w["decoder.weight"].norm(dim=0)  # from_pretrained(normalize_decoder=True)
        enc_w, enc_b, dec_w = w["encoder.weight"] * norms[:, None], w["encoder.bias"] * norms, w["decoder.weight"] / norms
        f = relu((x - w["bias"]) @ enc_w.T + enc_b)
        return f, f @ dec_w.T + w["bias"]
    if dict_class == "AutoEncoderNew":  # encode: ReLU(encoder(x)); decode: decoder(f)
        f = relu(x @ w["encoder.weight"].T + w["encoder.bias"])
        return f, f @ w["decoder.weight"].T + w["decoder.bias"]
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        post = relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
        if dict_class == "AutoEncoderTopK":
            top = post.topk(K, dim=-1)
            f = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
        else:
            f = post * (post > w["threshold"])
        return f, f @ w["decoder.weight"].T + w["b_dec"]
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        f = post * (post > w["threshold"])
        return f, f @ w["W_dec"] + w["b_dec"]
    pre = x @ w["W_enc"] + w["b_enc"]
    f = relu(pre * (pre > w["threshold"]))
    return f, f @ w["W_dec"] + w["b_dec"]


CLASSES = ["AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"]


@pytest.mark.parametrize("dict_class", CLASSES)
def test_codes_and_reconstruction_equal_the_classes_own(tmp_path, dict_class):
    w = state_dict(dict_class)
    sae = load_sae(folder(tmp_path / "trainer_0", dict_class, w))
    x = torch.randn(50, D, generator=_g(1))
    x[0] = -10.0  # a row with few positive pre-activations
    f, recon = reference(dict_class, w, x)
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode_sparse(sae.encode_sparse(x)), recon, atol=1e-5, rtol=1e-5)
    assert sae.identity["format"] == "dictionary_learning" and sae.cfg["layer"] == 22


def test_an_unsupported_class_or_missing_tensor_gets_one_line(tmp_path):
    with pytest.raises(ClipsaeError, match="dict_class 'GatedAutoEncoder' is not supported"):
        load_sae(folder(tmp_path / "gated", "GatedAutoEncoder", state_dict("AutoEncoder")))
    w = state_dict("AutoEncoderTopK")
    del w["b_dec"]
    with pytest.raises(ClipsaeError, match="lacks the tensors b_dec"):
        load_sae(folder(tmp_path / "topk", "AutoEncoderTopK", w))


def test_a_file_that_pickles_code_is_refused_naming_what_it_pickles(tmp_path, capfd):
    import os

    path = folder(tmp_path / "ae", "AutoEncoderNew", state_dict("AutoEncoderNew"))
    payload = type("Payload", (), {"__reduce__": lambda self: (os.system, ("echo the pickle ran",))})
    torch.save({**state_dict("AutoEncoderNew"), "x": payload()}, path / "ae.pt")
    with pytest.raises(ClipsaeError, match=r"pickles posix.system beside its tensors, and clipsae runs no pickled code"):
        load_sae(path)
    assert "the pickle ran" not in capfd.readouterr().out


@pytest.mark.parametrize("dict_class", ["AutoEncoderTopK", "JumpReluAutoEncoder", "AutoEncoder"])
def test_an_interrupted_runs_checkpoint_reads_as_the_finished_run_would_have_saved_it(tmp_path, dict_class):
    """``{step, ae, optimizer, config, norm_factor}``: ``ae`` trained on x / norm_factor, read for raw x."""
    w, nf = state_dict(dict_class), 2.5
    path = folder(tmp_path / "trainer_0", dict_class, w)
    torch.save({"step": 1200, "ae": w, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                "config": {"dict_class": dict_class}, "norm_factor": nf}, path / "ae.pt")
    sae = load_sae(path)
    x = torch.randn(40, D, generator=_g(2)) * 3
    f, recon = reference(dict_class, w, x / nf)  # the trained SAE on the inputs it was trained on
    torch.testing.assert_close(sae.encode(x), nf * f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), nf * recon, atol=1e-4, rtol=1e-5)
