"""Gated: the loss as the paper writes it, and the export as a JumpReLU that encodes exactly as the gated SAE."""

import torch
import torch.nn.functional as F

from clipsae.train import archs
from clipsae.train.export import to_inference
from clipsae.train.sae import TrainingSAE
from tests.train.archs.test_jumprelu import D, trained_a_little


def test_the_loss_is_reconstruction_l1_of_the_gate_and_the_frozen_decoder_term():
    sae = TrainingSAE(archs.get("gated").spec(D, 2, k=32, l1=3.0), 0)
    with torch.no_grad():
        sae.r_mag.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
        sae.b_mag.normal_(0, 0.1)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    out = sae(x)
    wx = (x - sae.b_dec) @ sae.W_enc.T
    gate = F.relu(wx + sae.b_enc)
    f = (wx + sae.b_enc > 0).float() * F.relu(sae.r_mag.exp() * wx + sae.b_mag)
    recon = ((x - f @ sae.W_dec - sae.b_dec) ** 2).sum(1).mean()
    aux = ((x - gate @ sae.W_dec - sae.b_dec) ** 2).sum(1).mean()
    l1 = (gate * sae.W_dec.norm(dim=1)).sum(1).mean()
    torch.testing.assert_close(out.loss, recon + 3.0 * l1 + aux, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    # The frozen-decoder term moves the gate, never the decoder: W_dec's gradient is the other terms'.
    sae2 = TrainingSAE(archs.get("gated").spec(D, 2, k=32, l1=3.0), 0)
    sae2.load_state_dict(sae.state_dict())
    wx2 = (x - sae2.b_dec) @ sae2.W_enc.T
    f2 = (wx2 + sae2.b_enc > 0).float() * F.relu(sae2.r_mag.exp() * wx2 + sae2.b_mag)
    gate2 = F.relu(wx2 + sae2.b_enc)
    (((x - f2 @ sae2.W_dec - sae2.b_dec) ** 2).sum(1).mean() + 3.0 * (gate2 * sae2.W_dec.norm(dim=1)).sum(1).mean()).backward()
    torch.testing.assert_close(sae.W_dec.grad, sae2.W_dec.grad, rtol=1e-4, atol=1e-6)


def test_the_export_is_a_jumprelu_that_encodes_as_the_gated_sae():
    sae = trained_a_little("gated")
    assert sae.r_mag.abs().max() > 0 and sae.b_mag.abs().max() > 0
    scale = 0.6
    model = to_inference(sae, scale)
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        wx = (scale * x - sae.b_dec) @ sae.W_enc.T
        want = (wx + sae.b_enc > 0).float() * F.relu(sae.r_mag.exp() * wx + sae.b_mag)
        assert model.architecture == "jumprelu"
        torch.testing.assert_close(model.encode(x), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(x), (want @ sae.W_dec + sae.b_dec) / scale, rtol=1e-4, atol=1e-5)


def test_a_saelens_gated_folder_reads_as_its_gated_encode(tmp_path):
    """A folder as SAELens saves a gated SAE (its encode: active = (x′W + b_gate > 0), acts = active·ReLU(x′(W ⊙
    exp(r_mag)) + b_mag)), read as the JumpReLU it equals."""
    from tests.analysis.helpers import saelens_dir

    g = torch.Generator().manual_seed(4)
    w = {"W_enc": torch.randn(D, 24, generator=g) / 4, "W_dec": torch.randn(24, D, generator=g),
         "b_dec": torch.randn(D, generator=g) * 0.1, "b_gate": torch.randn(24, generator=g) * 0.3,
         "r_mag": torch.randn(24, generator=g) * 0.3, "b_mag": torch.randn(24, generator=g) * 0.3}
    from clipsae.train import load_sae

    sae = load_sae(saelens_dir(tmp_path / "g", {"architecture": "gated"}, w))
    x = torch.randn(128, D, generator=g)
    xc = x - w["b_dec"]
    want = ((xc @ w["W_enc"] + w["b_gate"]) > 0).float() * F.relu(xc @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
    torch.testing.assert_close(sae.encode(x), want, rtol=1e-5, atol=1e-6)
