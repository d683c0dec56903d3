"""What the baselines share: they are fitted on the training batches by :meth:`Baseline.fit_step`, not by the
optimiser, and are exported as SAEs that ``encode`` and every analysis read unchanged, so that an SAE is
scored beside them under the same metrics (saev's practice: PCA beats SAEs on reconstruction and loses on
concepts)."""

import torch

from clipsae.train.archs.base import Architecture, StepOutput


class Baseline(Architecture):
    trains_by_gradient = False

    def fit_step(self, sae, x_BD: torch.Tensor) -> StepOutput:
        """Update the fit with one batch of scaled inputs; what to log (its loss is no gradient's)."""
        raise NotImplementedError

    def loss(self, sae, x_BD, dead_C, ranks=None):
        raise NotImplementedError(f"{self.name} is a baseline, fitted by fit_step")


def no_loss(sae, x_BD: torch.Tensor, l0: float, fired_N: torch.Tensor) -> StepOutput:
    """What a step of a baseline without a running loss logs: zeros, its L0 and the latents it used."""
    zero = torch.zeros((), device=x_BD.device)
    return StepOutput(zero, zero, torch.full((), float(l0), device=x_BD.device), fired_N)
