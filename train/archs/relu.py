"""``relu``: f = ReLU(z), loss ‖x̃ − x̂‖² + λ Σ_i f_i ‖W_dec,i‖; dead latents may be resampled."""

import torch
import torch.nn.functional as F

from clipsae.train.archs.base import Architecture, StepOutput
from clipsae.train.ranks import Ranks


class ReLU(Architecture):
    name = "relu"
    export_as = "standard"
    uses_l1 = True
    resamples = True

    def label(self, spec):
        return f"relu-{spec.size}-l1_{spec.l1:g}"

    def loss(self, sae, x, dead_C, ranks=Ranks()):
        f = F.relu(sae.pre_acts(x - sae.b_dec))
        x_hat = f @ sae.W_dec + sae.b_dec
        mse = (x - x_hat).pow(2).sum(1).mean()
        l1 = (f * sae.W_dec.norm(dim=1)).sum(1).mean()
        # Means over this share's rows; times the share, they are its part of the global batch's means.
        loss = (mse + sae.spec.l1 * l1) * ranks.share
        return StepOutput(loss, mse.detach(), (f > 0).sum(1).float().mean(), (f > 0).any(0))

    @torch.no_grad()
    def resample(self, sae, x_BD: torch.Tensor, dead_N: torch.Tensor, gen: torch.Generator,
                 opt: torch.optim.Adam) -> int:
        """Anthropic's resampling: point dead latents at inputs drawn ∝ their squared reconstruction loss.

        Returns how many latents were re-initialised. Their Adam moments are reset.
        """
        dead = dead_N.nonzero().squeeze(1)
        if not len(dead):
            return 0
        x_c = x_BD - sae.b_dec
        x_hat = F.relu(sae.pre_acts(x_c)) @ sae.W_dec + sae.b_dec
        loss_B = (x_BD - x_hat).pow(2).sum(1)
        probs = loss_B.pow(2).double().cpu()
        if not torch.isfinite(probs).all() or probs.sum() <= 0:
            return 0
        pick = torch.multinomial(probs, len(dead), replacement=True, generator=gen).to(x_BD.device)
        v = x_c[pick]
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead_N
        enc_norm = sae.W_enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0, device=v.device)
        sae.W_dec[dead] = v
        sae.W_enc[dead] = v * 0.2 * enc_norm
        sae.b_enc[dead] = 0.0
        for p in (sae.W_dec, sae.W_enc, sae.b_enc):
            state = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0.0
        sae.tokens_since_fired[dead] = 0
        return len(dead)


ARCH = ReLU()
