"""``mp``: Matching-Pursuit SAE (MP-SAE, as overcomplete's ``MpSAE``): codes chosen greedily against the residual.

With unit-norm atoms D (the rows of W_dec) and r₀ = x̃ − b_dec, for t = 1…k:
c = r_{t−1} Dᵀ, j = argmax_i c_i (the signed correlation, as overcomplete picks it), f_j += c_j,
r_t = r_{t−1} − c_j D_j. Then x̂ = f D + b_dec = x̃ − r_k. An atom may be picked again (its values add),
so a token has at most k active latents. Each pick explains what the earlier ones left, which suits
correlated and hierarchical features, where a one-shot encoder splits or absorbs them.

Loss: ‖r_k‖² / Σ‖x̃ − x̄‖², the batch's fraction of variance unexplained (as the TopK family's). The
gradient flows through every step's value c_j into D and through the residuals; the choices j have
none. There is no encoder: W_enc is unused in training and saved equal to W_dec. b_dec (trained) is
what overcomplete leaves to the user: inputs are centred on it before the pursuit.

Saved as a clipsae folder of architecture ``mp`` (with ``k``), which ``load_sae`` reads: its encode
runs the same pursuit from z₀ = (x − b_dec) W_encᵀ, updating the correlations by the atoms' Gram rows.
Each step costs a (B, d) × (d, n) product: a step of k picks costs about k TopK encoder products.
"""

import torch

from clipsae.train.archs.base import Architecture, StepOutput
from clipsae.train.ranks import Ranks


class MatchingPursuit(Architecture):
    name = "mp"
    export_as = "mp"
    uses_k = True

    def label(self, spec):
        return f"mp-{spec.size}-k{spec.k}"

    def loss(self, sae, x, dead_C, ranks=Ranks()):
        r = x - sae.b_dec
        picks, values = [], []
        for _ in range(sae.spec.k):
            v, j = (r @ sae.W_dec.T).max(1)
            r = r - v[:, None] * sae.W_dec[j]
            picks.append(j)
            values.append(v)
        sse = r.pow(2).sum()
        loss = sse / ranks.total_variance(x)
        with torch.no_grad():
            f = torch.zeros(x.shape[0], sae.spec.d_sae, device=x.device).scatter_add_(
                1, torch.stack(picks, 1), torch.stack(values, 1))
            active = f != 0
        return StepOutput(loss, sse.detach() / x.shape[0], active.sum(1).float().mean(), active.any(0))

    def export_options(self, sae):
        return {"k": sae.spec.k}

    @torch.no_grad()
    def inference_weights(self, sae, scale):
        return ((sae.W_dec * scale).float().cpu(), torch.zeros(sae.spec.d_sae),
                (sae.W_dec / scale).contiguous().float().cpu(), (sae.b_dec / scale).float().cpu().clone())


ARCH = MatchingPursuit()
