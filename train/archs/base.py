"""What every SAE architecture provides to the trainer, the exporter and the command line."""

from dataclasses import dataclass, fields, replace

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.ranks import Ranks
from clipsae.train.spec import ARCH_OPTIONS, SAESpec


@dataclass
class StepOutput:
    """What one forward pass of a batch produced: the loss to minimise and what to log.

    Every field is a tensor on the SAE's device, so a step never waits for the device to report;
    the trainer reads the logged values back once per logging interval.
    """

    loss: torch.Tensor
    mse: torch.Tensor  # Σ‖x̃ − x̂‖² / B, scaled units
    l0: torch.Tensor  # mean active latents per row
    fired_N: torch.Tensor  # (n,) bool: latents active on some row of the batch
    aux: torch.Tensor | float = 0.0


class Architecture:
    """An SAE architecture. Subclasses set the class attributes and implement :meth:`loss`.

    ``export_as``: the inference form it is saved as (``standard``, ``topk`` or ``jumprelu``).
    ``uses_k`` / ``uses_l1``: which of the sweepable options mean something to it.
    ``revives_with_auxk``: dead latents get AuxK's auxiliary loss. ``resamples``: dead latents
    may be re-initialised (``--resample-every``). ``trains_by_gradient`` False marks a baseline
    (``train/archs/baseline.py``): fitted by :meth:`fit_step` on the same batches, not by the optimiser.
    """

    name: str = ""
    options: tuple[str, ...] = ()  # the options of spec.ARCH_OPTIONS it uses; the others are set neutral
    export_as: str = "standard"
    uses_k: bool = False
    uses_l1: bool = False
    revives_with_auxk: bool = False
    resamples: bool = False
    trains_by_gradient: bool = True

    def spec(self, d: int, expansion: int, k: int, l1: float, latents: int | None = None, **options) -> SAESpec:
        """A checked spec, with the options this architecture ignores set to neutral values. ``latents``,
        where given, is the width instead of ``expansion`` · d."""
        if latents is not None and latents < 1:
            raise ClipsaeError(f"--latents must be at least 1, not {latents}")
        if latents is None and expansion < 1:
            raise ClipsaeError(f"--expansion must be at least 1, not {expansion}")
        n = latents if latents is not None else expansion * d
        if self.uses_k and not 1 <= k < n:
            raise ClipsaeError(f"--k {k} must be between 1 and the number of latents minus one "
                               f"({n - 1} for " + (f"{latents} latents)" if latents is not None else
                                                   f"expansion {expansion}, d={d})"))
        if self.uses_l1 and l1 < 0:
            raise ClipsaeError(f"--l1 must be non-negative, not {l1}")
        spec = SAESpec(self.name, d, 1 if latents is not None else expansion, k=k if self.uses_k else 0,
                       l1=l1 if self.uses_l1 else 0.0, latents=latents, **options)
        return self.normalize(spec)

    def normalize(self, spec: SAESpec) -> SAESpec:
        """Drop options that do not apply, so that equal SAEs have equal specs."""
        neutral = {f.name: f.default for f in fields(SAESpec) if f.name in ARCH_OPTIONS and f.name not in self.options}
        return replace(spec, **neutral)

    def label(self, spec: SAESpec) -> str:
        """A directory-safe name that tells SAEs of a sweep apart."""
        return f"{self.name}-{spec.size}-k{spec.k}"

    def loss(self, sae, x_BD: torch.Tensor, dead_C: torch.Tensor | None, ranks: Ranks = Ranks()) -> StepOutput:
        """Loss of a batch of scaled inputs; ``dead_C`` are the indices of the latents AuxK should revive
        (known on the host by their count, so that the step reads nothing back from the device).

        With several processes (``ranks``), ``x_BD`` is one share of the global batch and the loss
        is that share's part of the global batch's loss: its parts sum to the global loss.
        """
        raise NotImplementedError

    def resample(self, sae, x_BD: torch.Tensor, dead_N: torch.Tensor, gen: torch.Generator, opt) -> int:
        """Re-initialise dead latents; returns how many. Only where ``resamples`` is set."""
        raise NotImplementedError

    def export_options(self, sae) -> dict:
        """The inference model's own options (``k``, ``threshold``) for this trained SAE."""
        return {}

    def check_run(self, spec: SAESpec, steps: int, batch_size: int) -> None:
        """Refuse, in one line, a run too short for this architecture to be fitted at all."""

    def fit_rows(self, spec: SAESpec, n_rows: int) -> SAESpec:
        """The spec with what depends on the ``n_rows`` training rows settled; one line where they cannot serve it."""
        return spec

    def setup(self, sae, run_seed: int) -> None:
        """Register the state this architecture keeps beside the SAE's weights (saved in checkpoints)."""

    def initialise(self, sae, sample_MD: torch.Tensor, run_seed: int) -> None:
        """Set state from a sample of scaled training rows, once before the first step (process 0's, then sent)."""

    def after_update(self, sae) -> None:
        """Project the parameters back onto their constraints after an optimiser step."""

    def inference_weights(self, sae, scale: float) -> tuple[torch.Tensor, ...]:
        """(W_enc, b_enc, W_dec, b_dec) on raw activations of the SAE trained on s·x (s = ``scale``):
        the encoder takes s·x, the decoder's output is divided by s."""
        return ((sae.W_enc * scale).float().cpu(), sae.b_enc.detach().float().cpu().clone(),
                (sae.W_dec / scale).contiguous().float().cpu(), (sae.b_dec / scale).float().cpu().clone())
