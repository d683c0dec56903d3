"""An SAE under training: its parameters, the unit-norm decoder constraint and firing counts.

The loss is its architecture's (``train/archs/``). With d inputs and d_sae latents (N in shape
suffixes): ``W_enc`` (d_sae, d), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d) with unit-norm rows (the
features), ``b_dec`` (d).
Inputs are already scaled (x̃ = s·x). The formulas are in docs/sae.md.
"""

import torch
import torch.nn.functional as F
from torch import nn

from clipsae.train import archs, universal
from clipsae.train.archs.base import StepOutput
from clipsae.train.init import initial_decoder
from clipsae.train.ranks import Ranks
from clipsae.train.spec import SAESpec


class TrainingSAE(nn.Module):
    """One SAE under training. ``threshold`` (BatchTopK) is float64 and −1 until first set."""

    def __init__(self, spec: SAESpec, run_seed: int, bf16_matmul: bool = False):
        super().__init__()
        self.spec = spec
        self.arch = archs.get(spec.arch)
        self.bf16_matmul = bf16_matmul
        n, d = spec.d_sae, spec.d
        W_dec = initial_decoder(spec, run_seed)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("tokens_since_fired", torch.zeros(n, dtype=torch.int64))
        self.arch.setup(self, run_seed)
        if spec.blocks:
            universal.setup(self)

    def pre_acts(self, x_c_BD: torch.Tensor) -> torch.Tensor:
        """z = W_enc(x̃ − b_dec) + b_enc for already centred inputs; the matmul in bf16 if asked.

        Without autograd (the sparse family's forward) z is written over a (B, d_sae) buffer kept from
        the last step (:func:`pre_acts_buffer`): a fresh one each step costs the CPU page faults worth a
        fifth of the product. It is valid until the next call.
        """
        if torch.is_grad_enabled():
            if self.bf16_matmul:
                with torch.autocast(x_c_BD.device.type, dtype=torch.bfloat16):
                    return F.linear(x_c_BD, self.W_enc, self.b_enc).float()
            return F.linear(x_c_BD, self.W_enc, self.b_enc)
        z_BN = pre_acts_buffer((x_c_BD.shape[0], self.spec.d_sae), x_c_BD.device)
        if self.bf16_matmul:
            return torch.add(x_c_BD.bfloat16() @ self.W_enc.bfloat16().T, self.b_enc, out=z_BN)
        return torch.addmm(self.b_enc, x_c_BD, self.W_enc.T, out=z_BN)

    def forward(self, x_BD: torch.Tensor, dead_C: torch.Tensor | None = None, ranks: Ranks = Ranks()) -> StepOutput:
        """Loss of a batch of scaled inputs; ``dead_C`` are the indices of the latents AuxK should revive;
        ``ranks`` says which share of the global batch ``x_BD`` is."""
        if self.spec.blocks:
            return universal.loss(self, x_BD, dead_C, ranks)
        return self.arch.loss(self, x_BD, dead_C, ranks)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each feature's gradient its component along the feature (where W_dec is a parameter: an
        archetypal SAE's is made from others)."""
        if not isinstance(self.W_dec, nn.Parameter):
            return
        g, W = self.W_dec.grad, self.W_dec
        if g is not None:
            # In place, with no (d_sae, d) temporary: two passes over g instead of four.
            g.addcmul_(torch.linalg.vecdot(g, W).unsqueeze(1), W, value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Put every feature back on the unit sphere after an optimiser step (where W_dec is a parameter)."""
        if not isinstance(self.W_dec, nn.Parameter):
            return
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def track_firing(self, fired_N: torch.Tensor, n_tokens: int) -> None:
        """Count tokens since each latent last fired (for dead latents and AuxK)."""
        # masked_fill, not a boolean index: that would read the mask's count back to the host.
        self.tokens_since_fired.add_(n_tokens).masked_fill_(fired_N, 0)


_buffer: list[torch.Tensor] = []


def pre_acts_buffer(shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """One float32 buffer for the pre-activations, shared by every SAE of that shape (a sweep's SAEs
    take their steps one after another), replaced when another shape is asked for."""
    if not _buffer or _buffer[0].shape != shape or _buffer[0].device != torch.device(device):
        _buffer[:] = []  # the old one freed before the new one is made
        _buffer.append(torch.empty(shape, device=device))
    return _buffer[0]


def optimise(sae: TrainingSAE, opt: torch.optim.Optimizer, x_BD: torch.Tensor, dead_C: torch.Tensor | None,
             clip: float, ranks: Ranks = Ranks()) -> StepOutput:
    """One training step of one SAE on a scaled batch: loss, backward, constrained Adam step.

    Nothing is read back to the host, so the step never waits for the device. A non-finite loss
    is not checked here: it spoils the weights, and the trainer, which tracks the loss's
    finiteness on the device, stops the run before anything of it is saved. ``loss`` comes back detached.
    With several processes, ``x_BD`` is this one's share of the global batch and its loss this
    share's part of the global loss: gradients are summed and firing combined across processes,
    so every copy takes the global batch's step.
    """
    out = sae(x_BD, dead_C, ranks)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    for p in sae.parameters():
        if p.grad is not None:
            ranks.sum_(p.grad)
    sae.project_decoder_grad()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), clip)
    opt.step()
    sae.arch.after_update(sae)
    sae.normalize_decoder()
    sae.track_firing(ranks.any_(out.fired_N), len(x_BD) * ranks.world)
    out.loss = out.loss.detach()
    return out
