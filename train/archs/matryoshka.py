"""``matryoshka``: BatchTopK codes, loss Σ_l w_l ‖x̃ − (W_dec[:m_l] f[:m_l] + b_dec)‖² over nested prefixes.

Levels m_1 < … < m_L = n (default n·{1/16, 1/8, 1/4, 1/2, 1}); weights uniform (``uw``) or
reverse-linear (``rw``, the smallest prefix weighs most). Saved as JumpReLU like BatchTopK.
"""


import torch

from clipsae.train.archs.batchtopk import BatchTopK
from clipsae.train.sparse import decode_sparse


class Matryoshka(BatchTopK):
    name = "matryoshka"
    options = ("matryoshka_weighting",)

    def label(self, spec):
        return f"matryoshka-{spec.size}-k{spec.k}-{spec.matryoshka_weighting}"

    def prefixes(self, spec):
        return list(zip(spec.levels, spec.level_weights()))

    def reconstruction(self, sae, x, codes):
        # Prefix reconstructions share one sparse code; each level adds the latents of its band.
        partial = torch.zeros_like(x) + sae.b_dec
        main = x.new_zeros(())
        lo = 0
        for m, w in zip(sae.spec.levels, sae.spec.level_weights()):
            in_level = (codes.cols >= lo) & (codes.cols < m)
            partial = partial + decode_sparse(codes, sae.W_dec, codes.vals * in_level)
            main = main + w * (x - partial).pow(2).sum()
            lo = m
        return main, partial


ARCH = Matryoshka()
