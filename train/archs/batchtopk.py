"""``batchtopk``: the k·B largest of ReLU(z) over the batch; inference f = z·1[z > θ] (saved as JumpReLU).

θ ← 0.99 θ + 0.01 · min(kept value), in float64, over the training batches.
"""

import torch

from clipsae.train.archs.sparse_family import SparseFamily
from clipsae.train.sparse import select_batch_topk

THRESHOLD_MOMENTUM = 0.99


class BatchTopK(SparseFamily):
    name = "batchtopk"
    export_as = "jumprelu"

    def select(self, z_BN, k):
        return select_batch_topk(z_BN, k)

    @torch.no_grad()
    def after_step(self, sae, codes):
        # Computed on the device without reading back: the smallest positive code (inf if none, and
        # then θ stays), and θ's first value where it is still unset (negative).
        vals = codes.vals.detach()
        m = torch.where(vals > 0, vals, torch.inf).min().double()
        moved = torch.where(sae.threshold < 0, m, THRESHOLD_MOMENTUM * sae.threshold + (1 - THRESHOLD_MOMENTUM) * m)
        sae.threshold.copy_(torch.where(torch.isfinite(m), moved, sae.threshold))

    def export_options(self, sae):
        return {"threshold": torch.full((sae.spec.d_sae,), float(max(sae.threshold.item(), 0.0)))}


ARCH = BatchTopK()
