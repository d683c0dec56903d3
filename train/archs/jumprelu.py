"""``jumprelu``: f = z·1[z > θ] per latent, θ learned (Rajamanoharan et al. 2024, Gemma Scope).

The step's gradient is zero almost everywhere; θ learns through the rectangle straight-through
estimator of bandwidth ε: ∂/∂θ of z·1[z > θ] is −(θ/ε)·1[|z − θ| < ε/2], and of 1[z > θ] it is
−(1/ε)·1[|z − θ| < ε/2]. z keeps its exact gradient, 1[z > θ].

Loss: (1/B) Σ_b ‖x̃_b − x̂_b‖² (SAELens's: a sum over dimensions, a mean over tokens, so that its
coefficients carry over), plus one sparsity term:
- the L0 penalty (SAELens's and the paper's, the default): c·w·E[Σ_i 1[z_i > θ_i]], with c
  ``--l0-coefficient`` and w rising linearly from 0 to 1 over ``--sparsity-warmup`` steps;
- with ``--target-l0 T``, dictionary_learning's target loss instead: c·w·(L0/T − 1)², L0 the batch's
  mean active latents per token, which pulls L0 to T from either side.
The penalty trades reconstruction against sparsity at a price per active latent: on data it has
not seen tuned, it settles where a latent stops paying for itself (a planted dictionary: at its
own L0). The target form gives the L0 asked for, as TopK does. Both are offered for that reason.

θ is trained raw and kept ≥ 0 by a projection after each step (SAELens's, since its PR #728: a ReLU in
the forward would leave a θ that crossed 0 with no gradient, a plain ReLU latent for good), not as log θ: under Adam a log parameter moves θ by about θ·lr
a step (10⁻⁶ at θ = 0.01), so thresholds barely leave their start; SAELens changed from log to raw
in 6.48 (PR #718) for that reason, as dictionary_learning had. Initial θ 0.01 and bandwidth 0.05 are
SAELens's defaults, made for inputs scaled to E‖x‖ = √d as ours are (the paper's ε = 0.001 is for
inputs of unit norm). Saved as SAELens ``jumprelu`` with θ raw (``threshold``), as SAELens's files
hold it. The input scale s does not move θ (z is unchanged when s is folded into W_enc).
"""

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.archs.base import Architecture, StepOutput
from clipsae.train.ranks import Ranks

INITIAL_THRESHOLD = 0.01  # θ at initialisation, in units of z on inputs scaled to E‖x̃‖ = √d (SAELens's)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        near = ((z - theta).abs() < ctx.bandwidth / 2).to(g.dtype)
        return g * (z > theta), (-(theta / ctx.bandwidth) * near * g).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        near = ((z - theta).abs() < ctx.bandwidth / 2).to(g.dtype)
        return None, (-(1.0 / ctx.bandwidth) * near * g).sum(0), None


def jumprelu(z_BN: torch.Tensor, theta_N: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """z·1[z > θ], with the rectangle straight-through gradient for θ."""
    return _JumpReLU.apply(z_BN, theta_N, bandwidth)


def step(z_BN: torch.Tensor, theta_N: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """1[z > θ], with the rectangle straight-through gradient for θ (none for z)."""
    return _Step.apply(z_BN, theta_N, bandwidth)


def warmup_weight(sae, warmup: int) -> torch.Tensor:
    """w of the sparsity term (0 → 1 linearly over ``warmup`` steps), advancing the SAE's step count; on the
    device, so the step reads nothing back. The count is saved in checkpoints, so a resumed run goes on."""
    w = (sae.sparsity_steps.double() / warmup).clamp(max=1.0).float() if warmup > 0 else torch.ones((), device=sae.W_enc.device)
    if torch.is_grad_enabled():
        sae.sparsity_steps.add_(1)
    return w


def sparsity_term(spec, l0_B: torch.Tensor, w: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The L0 penalty or the target loss (module docstring) of this share's rows, as its part of the batch's.

    The target loss is not a sum over rows: with several processes, each one's part has the value of the
    global batch's loss times its share and the gradient of the global loss through its own rows,
    2c·w·(L0/T − 1)/T · ∂L0_share, with L0 the global batch's (summed across processes, not differentiated).
    """
    l0 = l0_B.mean()
    if spec.target_l0 > 0:
        l0_global = ranks.sum_(l0.detach() * ranks.share)
        gap = l0_global / spec.target_l0 - 1
        slope = 2 * gap / spec.target_l0
        return spec.l0_coefficient * w * (gap.pow(2) + slope * (l0 - l0.detach())) * ranks.share
    return spec.l0_coefficient * w * l0 * ranks.share


def check_sparsity_options(spec) -> None:
    if spec.bandwidth <= 0:
        raise ClipsaeError(f"--bandwidth must be positive, not {spec.bandwidth:g}")
    if spec.l0_coefficient < 0:
        raise ClipsaeError(f"--l0-coefficient must be non-negative, not {spec.l0_coefficient:g}")
    if spec.target_l0 < 0:
        raise ClipsaeError(f"--target-l0 must be positive (or 0 for the L0 penalty), not {spec.target_l0:g}")
    if spec.sparsity_warmup < 0:
        raise ClipsaeError(f"--sparsity-warmup must be at least 0, not {spec.sparsity_warmup}")


class JumpReLU(Architecture):
    name = "jumprelu"
    options = ("bandwidth", "l0_coefficient", "target_l0", "sparsity_warmup")
    export_as = "jumprelu"

    def normalize(self, spec):
        spec = super().normalize(spec)
        check_sparsity_options(spec)
        return spec

    def label(self, spec):
        target = f"l0_{spec.target_l0:g}-" if spec.target_l0 > 0 else ""
        return f"{self.name}-{spec.size}-{target}c{spec.l0_coefficient:g}"

    def setup(self, sae, run_seed):
        sae.jump_threshold = torch.nn.Parameter(torch.full((sae.spec.d_sae,), INITIAL_THRESHOLD))
        sae.register_buffer("sparsity_steps", torch.zeros((), dtype=torch.int64))

    def loss(self, sae, x, dead_C, ranks=Ranks()):
        spec = sae.spec
        z = sae.pre_acts(x - sae.b_dec)
        theta = sae.jump_threshold
        f = jumprelu(z, theta, spec.bandwidth)
        x_hat = f @ sae.W_dec + sae.b_dec
        sse = (x - x_hat).pow(2).sum()
        l0_B = step(z, theta, spec.bandwidth).sum(1)
        loss = sse / x.shape[0] * ranks.share + sparsity_term(spec, l0_B, warmup_weight(sae, spec.sparsity_warmup), ranks)
        active = f.detach() > 0
        return StepOutput(loss, sse.detach() / x.shape[0], active.sum(1).float().mean(), active.any(0))

    @torch.no_grad()
    def after_update(self, sae):
        sae.jump_threshold.clamp_(min=0.0)

    def export_options(self, sae):
        return {"threshold": sae.jump_threshold.detach().float().cpu()}


ARCH = JumpReLU()
