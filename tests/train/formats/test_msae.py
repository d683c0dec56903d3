"""MSAE checkpoints load and code as its SAE wrapper's top-k encode and decode do: input mean-centred and
scaled, pre_bias subtracted, TopK (with or without a ReLU) or ReLU, codes soft-capped, decoded back."""

import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.train import load_sae

D, N, K = 16, 64, 6


def msae_file(folder, activation="TopKReLU", k=K, tied=False, normalize=False, soft_cap=8.0, mean="vector", seed=0):
    """A checkpoint as MSAE's train.py saves one, named as its load_model parses names."""
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(D, N, generator=g) / D**0.5
    model = {"pre_bias": torch.randn(D, generator=g) * 0.1, "encoder": enc, "latent_bias": torch.randn(N, generator=g) * 0.1,
             "latents_activation_frequency": torch.zeros(N, dtype=torch.int64)}
    if not tied:
        model["decoder"] = torch.randn(N, D, generator=g) * 0.3
    mean_center = torch.randn(D, generator=g) if mean == "vector" else mean
    ckpt = {"model": model, "mean_center": mean_center, "scaling_factor": 1.7, "target_norm": 4.0}
    act = f"{activation}_{k}" if "TopK" in activation else f"{activation}_0.001"
    name = f"{N}_{D}_{act}_RW_{tied}_{normalize}_{soft_cap}_cc3m_ViT-L~14_train_image_2905936_{D}.pth"
    path = folder / name
    torch.save(ckpt, path)
    return path, ckpt


def reference(path, ckpt, x, activation="TopKReLU", soft_cap=8.0, tied=False):
    """MSAE's SAE.encode(x)[0] and SAE.decode written out."""
    m = ckpt["model"]
    mean = ckpt["mean_center"] if isinstance(ckpt["mean_center"], torch.Tensor) else torch.tensor(ckpt["mean_center"])
    x = (x - mean) * ckpt["scaling_factor"]
    z = (x - m["pre_bias"]) @ m["encoder"] + m["latent_bias"]
    if "TopKabs" in activation:  # TopK(use_abs=True): x = |x|, then its top k; the ReLU changes nothing
        top = z.abs().topk(K, dim=-1)
        f = torch.zeros_like(z).scatter_(-1, top.indices, top.values)
    elif "TopK" in activation:
        idx = z.topk(K, dim=-1).indices
        vals = z.gather(-1, idx)
        vals = torch.relu(vals) if activation == "TopKReLU" else vals
        f = torch.zeros_like(z).scatter_(-1, idx, vals)
    else:
        f = torch.relu(z)
    if soft_cap > 0:
        f = soft_cap * torch.tanh(f / soft_cap)
    dec = m["encoder"].t() if tied else m["decoder"]
    return f, (f @ dec + m["pre_bias"]) / ckpt["scaling_factor"] + mean


@pytest.mark.parametrize("activation, tied, soft_cap, mean", [
    ("TopKReLU", False, 8.0, "vector"),
    ("TopK", False, 0.0, "vector"),
    ("TopKReLU", True, 30.0, 0.0),
    ("ReLU", False, 0.0, "vector"),
    ("TopKabs", False, 8.0, "vector"),
    ("TopKabsReLU", False, 0.0, "vector"),
])
def test_codes_and_reconstruction_equal_msaes_own(tmp_path, activation, tied, soft_cap, mean):
    path, ckpt = msae_file(tmp_path, activation, tied=tied, soft_cap=soft_cap, mean=mean)
    sae = load_sae(path)
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(1))
    f, recon = reference(path, ckpt, x, activation, soft_cap, tied)
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), recon, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.reconstruct_sparse(x, sae.encode_sparse(x)), recon, atol=1e-5, rtol=1e-5)
    assert sae.identity["format"] == "msae" and sae.cfg["variant"].startswith("top-k encode" if "TopK" in activation else "ReLU")


@pytest.mark.parametrize("kw, message", [
    ({"normalize": True}, "normalize=True"),
    ({"activation": "BatchTopKReLU"}, "activation 'BatchTopKReLU_6' is not supported.*selects across a training batch"),
    ({"activation": "BatchTopKabs"}, "activation 'BatchTopKabs_6' is not supported"),
])
def test_what_msae_itself_cannot_pin_down_is_refused_in_one_line(tmp_path, kw, message):
    path, _ = msae_file(tmp_path, **kw)
    with pytest.raises(ClipsaeError, match=message):
        load_sae(path)


def test_a_renamed_file_cannot_say_its_configuration(tmp_path):
    path, _ = msae_file(tmp_path)
    renamed = path.rename(tmp_path / "sae.pth")
    with pytest.raises(ClipsaeError, match="MSAE keeps its configuration in the file name"):
        load_sae(renamed)
