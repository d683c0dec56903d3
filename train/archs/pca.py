"""``pca``: the principal directions of the training tokens, a baseline. Its codes are the projections
z = U(x − μ), of which each token keeps the k of largest magnitude with their sign (``topk_magnitude``).

The fit is exact: the running sums Σx and Σxxᵀ (float64) over every training batch give the mean μ and
the covariance Σxxᵀ/n − μμᵀ, whose eigenvectors, by decreasing eigenvalue, are the rows of U (all d of
them with ``--expansion 1``, the top N with ``--latents N``); each is signed so that its entry of largest magnitude is
positive. These equal the right singular vectors of the centred rows up to sign.
"""

from dataclasses import replace

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.archs.baseline import Baseline, no_loss
from clipsae.train.spec import SAESpec


class PCA(Baseline):
    name = "pca"
    export_as = "topk_magnitude"
    uses_k = True

    def spec(self, d, expansion, k, l1, latents=None, **options):
        if latents is None and expansion != 1:
            raise ClipsaeError(f"--arch pca has at most d_in = {d} principal directions: use --expansion 1 (all of them) "
                               f"or --latents N (the top N), not --expansion {expansion}")
        if latents is not None and not 1 <= latents <= d:
            raise ClipsaeError(f"--latents {latents} must be between 1 and d_in = {d} for --arch pca")
        n = latents if latents is not None else d
        if not 1 <= k <= n:
            raise ClipsaeError(f"--k {k} must be between 1 and the {n} components of --arch pca (the projections kept "
                               f"per token)")
        return self.normalize(SAESpec(self.name, d, 1, k=k, l1=0.0, latents=latents, **options))

    def normalize(self, spec):
        return replace(super().normalize(spec), aux_alpha=0.0)

    def label(self, spec):
        return f"pca-k{spec.k}" if spec.latents is None else f"pca-{spec.size}-k{spec.k}"

    def setup(self, sae, run_seed):
        d = sae.spec.d
        sae.register_buffer("sum_D", torch.zeros(d, dtype=torch.float64))
        sae.register_buffer("outer_DD", torch.zeros(d, d, dtype=torch.float64))
        sae.register_buffer("rows", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def fit_step(self, sae, x_BD):
        x = x_BD.double()
        sae.sum_D += x.sum(0)
        sae.outer_DD += x.T @ x
        sae.rows += len(x)
        return no_loss(sae, x_BD, sae.spec.k, torch.ones(sae.spec.d_sae, dtype=torch.bool, device=x_BD.device))

    @torch.no_grad()
    def components(self, sae) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (d, d) rows by decreasing variance, μ (d)), in the scaled inputs' units, float64."""
        n = sae.rows.clamp_min(1)
        mu = sae.sum_D / n
        cov = sae.outer_DD / n - torch.outer(mu, mu)
        _, vectors = torch.linalg.eigh(cov.cpu())
        U = vectors.flip(1).T
        sign = torch.sign(U.gather(1, U.abs().argmax(1, keepdim=True)))
        return U * sign, mu.cpu()

    def inference_weights(self, sae, scale):
        # Codes are the projections of raw activations: U is unit-norm both ways, μ moves to raw units.
        U, mu = self.components(sae)
        U = U[: sae.spec.d_sae]  # the top d_sae components
        return U.float(), torch.zeros(len(U)), U.float().contiguous(), (mu / scale).float()

    def export_options(self, sae):
        return {"k": sae.spec.k}


ARCH = PCA()
