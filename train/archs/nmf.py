"""``nmf``: saev's semi-NMF baseline, x ≈ z·D with non-negative codes z and an unconstrained dictionary D
(d_sae rows). The codes are dense, as saev's are: keeping only the largest entries would break the
cancellations between the dictionary's signed rows (tested: FVU 32 at 8 of 32 kept, 0.005 dense).

Fit (saev's ``MiniBatchSemiNMF``): D starts Gaussian; each training batch is coded with 10 multiplicative
updates against the current D (``seminmf_solve`` in train/model.py), the statistics ZᵀZ and ZᵀX are
accumulated with a forgetting factor of 0.7, and every 10 steps D ← (ZᵀZ + 10⁻⁶ I)⁻¹ ZᵀX. Encoding after
the fit takes 300 updates (cfg.json's ``encode_iterations``). No mean is subtracted, as in saev: D holds it.
D, the statistics and the step count are the SAE's buffers, so the fit checkpoints and resumes.
"""

import torch

from clipsae.host_sync import declared
from clipsae.train.archs.base import StepOutput
from clipsae.train.archs.baseline import Baseline
from clipsae.train.init import generator_seed
from clipsae.train.model import seminmf_solve

FIT_ITERATIONS = 10
FORGET = 0.7
UPDATE_EVERY = 10
RIDGE = 1e-6


class NMF(Baseline):
    name = "nmf"
    export_as = "seminmf"

    def label(self, spec):
        return f"nmf-{spec.size}"

    def setup(self, sae, run_seed):
        n, d = sae.spec.d_sae, sae.spec.d
        g = torch.Generator().manual_seed(generator_seed(run_seed, self.label(sae.spec)))
        sae.register_buffer("D_ND", torch.randn(n, d, generator=g))
        sae.register_buffer("ztz_NN", torch.zeros(n, n))
        sae.register_buffer("ztx_ND", torch.zeros(n, d))
        sae.register_buffer("fit_steps", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def fit_step(self, sae, x_BD):
        z = seminmf_solve(x_BD @ sae.D_ND.T, sae.D_ND, FIT_ITERATIONS)
        sse = (x_BD - z @ sae.D_ND).pow(2).sum()
        sae.ztz_NN.mul_(FORGET).add_((1 - FORGET) * (z.T @ z))
        sae.ztx_ND.mul_(FORGET).add_((1 - FORGET) * (z.T @ x_BD))
        if not hasattr(sae, "nmf_steps"):
            with declared("the fit's step count, read once a run; the host counts it from then on"):
                sae.nmf_steps = int(sae.fit_steps)
        sae.fit_steps += 1
        sae.nmf_steps += 1
        if sae.nmf_steps % UPDATE_EVERY == 0:
            eye = torch.eye(len(sae.ztz_NN), device=x_BD.device)
            sae.D_ND.copy_(torch.linalg.solve(sae.ztz_NN + RIDGE * eye, sae.ztx_ND))
        mse = sse / len(x_BD)
        return StepOutput(mse, mse, (z > 0).sum(1).double().mean(), (z > 0).any(0))

    def inference_weights(self, sae, scale):
        # Codes are scale-free: x̃ ≈ z·D̃ on s·x means x ≈ z·(D̃/s).
        D = (sae.D_ND / scale).float().cpu()
        return D, torch.zeros(len(D)), D.contiguous(), torch.zeros(D.shape[1])


ARCH = NMF()
