"""``topk``: f = TopK_k(ReLU(z)) per token, with AuxK; saved as SAELens ``topk``."""

from clipsae.train.archs.sparse_family import SparseFamily
from clipsae.train.sparse import select_topk


class TopK(SparseFamily):
    name = "topk"
    export_as = "topk"

    def select(self, z_BN, k):
        return select_topk(z_BN, k)

    def export_options(self, sae):
        return {"k": sae.spec.k}


ARCH = TopK()
