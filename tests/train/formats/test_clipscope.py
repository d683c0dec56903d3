"""CLIP-Scope checkpoints load and code as their TopKSAE does: the k largest of (x − pre_b)·enc, no ReLU."""

import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.train import load_sae

D, N, K = 12, 48, 4


def clipscope_file(path, seed=0, **drop):
    """A checkpoint in CLIP-Scope's exact layout (``torch.save`` of a dict), random weights."""
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(D, N, generator=g) / D**0.5
    enc[0] = enc[0].abs() + 0.5  # so that x = pre_b − c·e_0 has only negative pre-activations
    state = {"pre_b": torch.randn(D, generator=g) * 0.1, "enc": enc, "dec": enc.mT.clone() * 1.3}
    ckpt = {"model_state_dict": state, "k": K, "d_in": D, "n_features": N}
    for key in drop:
        (state if key in state else ckpt).pop(key)
    torch.save(ckpt, path)
    return path, state


def reference(state, x):
    """CLIP-Scope's TopKSAE.forward_verbose written out: latent and reconstruction."""
    top = torch.topk((x - state["pre_b"]) @ state["enc"], k=K, dim=-1)
    latent = torch.zeros(x.shape[0], N).scatter_(-1, top.indices, top.values)
    return latent, latent @ state["dec"] + state["pre_b"]


def test_codes_and_reconstruction_equal_clipscopes_own(tmp_path):
    path, state = clipscope_file(tmp_path / "22_resid.pt")
    sae = load_sae(path)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    x[0] = state["pre_b"] - 10 * torch.eye(D)[0]  # every pre-activation negative: fewer than k positive
    latent, recon = reference(state, x)
    assert (latent[0][latent[0] != 0] < 0).all(), "the test row must keep negative codes"
    torch.testing.assert_close(sae.encode(x), latent)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon)
    codes = sae.encode_sparse(x)
    assert codes.counts().tolist() == [K] * 64
    torch.testing.assert_close(sae.decode_sparse(codes), recon)
    assert sae.identity["format"] == "clipscope" and sae.architecture == "topk_signed"


def test_detected_from_contents_not_the_file_name(tmp_path):
    path, _ = clipscope_file(tmp_path / "1200013184.bin")
    assert load_sae(path).identity["format"] == "clipscope"
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ClipsaeError, match="is not an SAE file: it holds none of"):
        load_sae(tmp_path / "other.pt")


@pytest.mark.parametrize("drop, message", [({"k": 1}, "lacks k beside its model_state_dict"),
                                           ({"dec": 1}, "lacks the tensors dec")])
def test_a_malformed_checkpoint_gets_one_line_naming_what_is_missing(tmp_path, drop, message):
    path, _ = clipscope_file(tmp_path / "bad.pt", **drop)
    with pytest.raises(ClipsaeError, match=message):
        load_sae(path, sae_format="clipscope")
