"""The loss shared by the architectures whose codes are a selection of pre-activations (TopK and kin).

Codes come from the sparse kernels (only the selected latents are touched), the reconstruction
loss is normalised by the batch's total variance, and AuxK revives dead latents:
L = ‖x̃ − x̂‖² / Σ‖x̃ − x̄‖² + α ‖e − ê‖² / Σ‖e − ē‖², e = x̃ − x̂, ê the AuxK reconstruction.

AuxK's k_aux codes per row among C dead latents are computed densely over those C columns while
C ≤ :data:`DENSE_AUXK_RATIO`·k_aux (four (B, C, d) products: the decoding, and the gradients of the
codes, of the decoder rows and of the encoder rows), and as sparse codes beyond: k_aux is d/2, a large
share of C where few latents are dead, and dense products run at many times the speed of the sparse
kernels per multiply-add (docs/benchmarks.md, "SAE training step").
"""

import torch
import torch.nn.functional as F

from clipsae.train.archs.base import Architecture, StepOutput
from clipsae.train.codes import SparseCodes
from clipsae.train.ranks import Ranks
from clipsae.train.sparse import decode_sparse, encode_columns, encode_sparse, select_topk_in

DENSE_AUXK_RATIO = 16


def gathered_codes(sae, x_c: torch.Tensor, z: torch.Tensor, selection) -> SparseCodes:
    """The selected entries of ReLU(z), differentiable with a sparse backward; ``x_c`` = x − b_dec, no gradient."""
    rows, cols, offsets = selection
    vals = F.relu(encode_sparse(x_c, sae.b_dec, sae.W_enc, sae.b_enc, z, rows, cols, offsets))
    return SparseCodes(rows, cols, vals, offsets)


def auxk_reconstruction(sae, x_c: torch.Tensor, z: torch.Tensor, dead_C: torch.Tensor, k_aux: int) -> torch.Tensor:
    """ê = W_dec TopK_{k_aux}(ReLU of z over the dead latents), (B, d), differentiable (module docstring)."""
    k_aux = min(k_aux, len(dead_C))
    if len(dead_C) > DENSE_AUXK_RATIO * k_aux:
        return decode_sparse(gathered_codes(sae, x_c, z, select_topk_in(z, dead_C, k_aux)), sae.W_dec)
    z_BC = encode_columns(x_c, sae.b_dec, sae.W_enc, sae.b_enc, z, dead_C, sae.bf16_matmul)
    with torch.no_grad():
        top_BK = z_BC.topk(k_aux, dim=1, sorted=False).indices
    # The k_aux codes of each row put in place among the C columns: ReLU and its backward touch B·k_aux values.
    f_BC = torch.zeros_like(z_BC).scatter(1, top_BK, F.relu(z_BC.gather(1, top_BK)))
    # Under --precision bf16 the products are bf16 as the encoder's is (their backward too: autocast casts
    # what they save).
    with torch.autocast(x_c.device.type, dtype=torch.bfloat16, enabled=sae.bf16_matmul):
        return (f_BC @ sae.W_dec.index_select(0, dead_C)).float()


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

    def prefixes(self, spec) -> list[tuple[int, float]]:
        """(m, w): the prefixes of the latents whose reconstructions the loss weighs (all of them, weight 1;
        Matryoshka's nested levels). Universal SAEs (train/universal.py) read it."""
        return [(spec.d_sae, 1.0)]

    def after_step(self, sae, codes: SparseCodes) -> None:
        """Bookkeeping after the forward pass (BatchTopK's running threshold)."""

    def loss(self, sae, x, dead_C, ranks=Ranks()):
        spec = sae.spec
        with torch.no_grad():  # the kernels give b_dec its gradient themselves
            x_c = x - sae.b_dec
            z = sae.pre_acts(x_c)
        codes = gathered_codes(sae, x_c, z, self.select(z, spec.k))
        total_var = ranks.total_variance(x)
        main, x_hat = self.reconstruction(sae, x, codes)
        e = x - x_hat
        sse = e.pow(2).sum()
        loss = main / total_var
        aux = torch.zeros((), device=x.device)
        if dead_C is not None and len(dead_C):
            e_hat = auxk_reconstruction(sae, x_c, z, dead_C, spec.aux_k)
            target = e.detach()
            l_aux = (target - e_hat).pow(2).sum() / ranks.total_variance(target)
            loss = loss + spec.aux_alpha * l_aux
            aux = l_aux.detach()
        self.after_step(sae, codes)
        active = (codes.vals > 0).to(torch.uint8)
        fired = torch.zeros(spec.d_sae, dtype=torch.uint8, device=x.device).scatter_reduce_(0, codes.cols, active, "amax")
        l0 = active.sum() / x.shape[0]
        return StepOutput(loss, sse.detach() / x.shape[0], l0, fired.bool(), aux)
