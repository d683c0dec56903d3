"""The loss shared by the architectures whose codes are a selection of pre-activations (TopK and kin).

Codes come from the sparse kernels (only the selected latents are touched), the reconstruction
loss is normalised by the batch's total variance, and AuxK revives dead latents:
L = ‖x̃ − x̂‖² / Σ‖x̃ − x̄‖² + α ‖e − ê‖² / Σ‖e − ē‖², e = x̃ − x̂, ê the AuxK reconstruction.
"""

import torch
import torch.nn.functional as F

from clipsae.train.archs.base import Architecture, StepOutput
from clipsae.train.codes import SparseCodes
from clipsae.train.ranks import Ranks
from clipsae.train.sparse import decode_sparse, encode_sparse, select_topk_in


def gathered_codes(sae, x_c: torch.Tensor, z: torch.Tensor, selection) -> SparseCodes:
    """The selected entries of ReLU(z), differentiable with a sparse backward."""
    rows, cols, offsets = selection
    vals = F.relu(encode_sparse(x_c, sae.W_enc, sae.b_enc, z, rows, cols, offsets))
    return SparseCodes(rows, cols, vals, offsets)


class SparseFamily(Architecture):
    """Subclasses choose the selection, and may change the reconstruction loss or learn a threshold."""

    uses_k = True
    revives_with_auxk = True

    def select(self, z_BN: torch.Tensor, k: int):
        """(rows, cols, offsets) of the latents that form the codes."""
        raise NotImplementedError

    def reconstruction(self, sae, x: torch.Tensor, codes: SparseCodes) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss's numerator, x̂): by default ‖x̃ − x̂‖² summed over the batch."""
        x_hat = decode_sparse(codes, sae.W_dec) + sae.b_dec
        return (x - x_hat).pow(2).sum(), x_hat

    def after_step(self, sae, codes: SparseCodes) -> None:
        """Bookkeeping after the forward pass (BatchTopK's running threshold)."""

    def loss(self, sae, x, dead_C, ranks=Ranks()):
        spec = sae.spec
        x_c = x - sae.b_dec
        with torch.no_grad():
            z = sae.pre_acts(x_c)
        codes = gathered_codes(sae, x_c, z, self.select(z, spec.k))
        total_var = ranks.total_variance(x)
        main, x_hat = self.reconstruction(sae, x, codes)
        e = x - x_hat
        sse = e.pow(2).sum()
        loss = main / total_var
        aux = torch.zeros((), device=x.device)
        if dead_C is not None and len(dead_C):
            aux_codes = gathered_codes(sae, x_c, z, select_topk_in(z, dead_C, spec.aux_k))
            e_hat = decode_sparse(aux_codes, sae.W_dec)
            target = e.detach()
            l_aux = (target - e_hat).pow(2).sum() / ranks.total_variance(target)
            loss = loss + spec.aux_alpha * l_aux
            aux = l_aux.detach()
        self.after_step(sae, codes)
        active = (codes.vals > 0).to(torch.uint8)
        fired = torch.zeros(spec.d_sae, dtype=torch.uint8, device=x.device).scatter_reduce_(0, codes.cols, active, "amax")
        l0 = active.sum() / x.shape[0]
        return StepOutput(loss, sse.detach() / x.shape[0], l0, fired.bool(), aux)
