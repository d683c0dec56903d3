"""``gated``: a gate decides which latents fire, a magnitude path how much (Rajamanoharan et al. 2024).

With x′ = x̃ − b_dec and W = W_enc shared by both paths:
π_gate = W x′ + b_gate, π_mag = exp(r_mag) ⊙ (W x′) + b_mag, f = 1[π_gate > 0] ⊙ ReLU(π_mag).
Loss, as the paper's and dictionary_learning's: ‖x̃ − x̂‖² + λ Σ_i ReLU(π_gate,i)·‖W_dec,i‖
+ ‖x̃ − (ReLU(π_gate) W_dec + b_dec)‖² with W_dec and b_dec frozen (detached) in the last term, which
trains the gate to reconstruct through the decoder without moving it; sums over dimensions, means
over rows. ``b_enc`` holds b_gate.

Saved as SAELens ``jumprelu``, which it equals: the gate π_gate > 0 is π_mag > b_mag − exp(r_mag)·b_gate,
so with W_enc′ = exp(r_mag) ⊙ W, b_enc′ = b_mag and θ = b_mag − exp(r_mag)·b_gate, f = ReLU(z)·1[z > θ]
(a negative θ makes the gate pass every positive z, as ReLU(π_mag) > 0 implies it).
"""

import torch
import torch.nn.functional as F

from clipsae.train.archs.base import Architecture, StepOutput
from clipsae.train.ranks import Ranks


class Gated(Architecture):
    name = "gated"
    export_as = "jumprelu"
    uses_l1 = True

    def label(self, spec):
        return f"gated-{spec.size}-l1_{spec.l1:g}"

    def setup(self, sae, run_seed):
        n = sae.spec.d_sae
        sae.r_mag = torch.nn.Parameter(torch.zeros(n))
        sae.b_mag = torch.nn.Parameter(torch.zeros(n))

    def loss(self, sae, x, dead_C, ranks=Ranks()):
        wx = F.linear(x - sae.b_dec, sae.W_enc)
        pi_gate = wx + sae.b_enc
        pi_mag = sae.r_mag.exp() * wx + sae.b_mag
        f = (pi_gate > 0).to(x.dtype) * F.relu(pi_mag)
        sse = (x - (f @ sae.W_dec + sae.b_dec)).pow(2).sum()
        gate = F.relu(pi_gate)
        l1 = (gate * sae.W_dec.norm(dim=1)).sum()
        aux = (x - (gate @ sae.W_dec.detach() + sae.b_dec.detach())).pow(2).sum()
        n = x.shape[0]
        # Means over this share's rows; times the share, they are its part of the global batch's means.
        loss = (sse + sae.spec.l1 * l1 + aux) / n * ranks.share
        active = f.detach() > 0
        return StepOutput(loss, sse.detach() / n, active.sum(1).float().mean(), active.any(0), aux.detach() / n)

    @torch.no_grad()
    def inference_weights(self, sae, scale):
        r = sae.r_mag.exp()
        return ((r[:, None] * sae.W_enc * scale).float().cpu(), sae.b_mag.float().cpu().clone(),
                (sae.W_dec / scale).contiguous().float().cpu(), (sae.b_dec / scale).float().cpu().clone())

    def export_options(self, sae):
        return {"threshold": (sae.b_mag - sae.r_mag.exp() * sae.b_enc).detach().float().cpu()}


ARCH = Gated()
