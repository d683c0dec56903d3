"""``random``: a TopK SAE of the given width and k left at its initial weights, a baseline that is never
trained (ViSAEBench found that most metrics cannot tell one from a trained SAE; the table must show
whether they can). Its weights are the initialisation every clipsae SAE starts from (random unit decoder
rows, the encoder their copy, b_dec the geometric median of the training rows)."""

import torch

from clipsae.train.archs.baseline import Baseline, no_loss


class Random(Baseline):
    name = "random"
    export_as = "topk"
    uses_k = True

    def label(self, spec):
        return f"random-{spec.size}-k{spec.k}"

    def fit_step(self, sae, x_BD):
        return no_loss(sae, x_BD, sae.spec.k, torch.ones(sae.spec.d_sae, dtype=torch.bool, device=x_BD.device))

    def export_options(self, sae):
        return {"k": sae.spec.k}


ARCH = Random()
