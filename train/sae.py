"""The SAE family during training: parameters, forward pass and loss of each architecture.

Internal convention (d inputs, n latents): ``W_enc`` (n, d), ``b_enc`` (n), ``W_dec`` (n, d) with
unit-norm rows (the features), ``b_dec`` (d). Inputs are already scaled (x̃ = s·x). The formulas
are in docs/sae.md; names follow DESIGN.md §3.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipsae.train.spec import SAESpec
from clipsae.train.codes import SparseCodes
from clipsae.train.sparse import decode_sparse, encode_sparse, select_batch_topk, select_topk, select_topk_among

THRESHOLD_MOMENTUM = 0.99


@dataclass
class StepOutput:
    """What one forward pass of a batch produced: the loss to minimise and what to log."""

    loss: torch.Tensor
    mse: torch.Tensor  # Σ‖x̃ − x̂‖² / B, scaled units
    l0: float
    fired_N: torch.Tensor  # (n,) bool: latents active on some row of the batch
    aux: float = 0.0


def geometric_median(x_MD: torch.Tensor, iters: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's iteration for argmin_y Σ‖x_i − y‖, started at the mean."""
    x = x_MD.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * y.norm().clamp_min(1e-12):
            y = y_new
            break
        y = y_new
    return y.float()


class TrainingSAE(nn.Module):
    """One SAE under training. ``threshold`` (BatchTopK) is float64 and −1 until first set."""

    def __init__(self, spec: SAESpec, generator: torch.Generator, bf16_matmul: bool = False):
        super().__init__()
        self.spec = spec
        self.bf16_matmul = bf16_matmul
        n, d = spec.n, spec.d
        W_dec = torch.randn(n, d, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("tokens_since_fired", torch.zeros(n, dtype=torch.int64))

    def pre_acts(self, x_c_BD: torch.Tensor) -> torch.Tensor:
        """z = W_enc(x̃ − b_dec) + b_enc for already centred inputs; the matmul in bf16 if asked."""
        if self.bf16_matmul:
            with torch.autocast(x_c_BD.device.type, dtype=torch.bfloat16):
                return F.linear(x_c_BD, self.W_enc, self.b_enc).float()
        return F.linear(x_c_BD, self.W_enc, self.b_enc)

    def forward(self, x_BD: torch.Tensor, dead_N: torch.Tensor | None = None) -> StepOutput:
        """Loss of a batch of scaled inputs; ``dead_N`` marks latents AuxK should revive."""
        if self.spec.arch == "relu":
            return self._relu(x_BD)
        return self._sparse(x_BD, dead_N)

    def _relu(self, x: torch.Tensor) -> StepOutput:
        f = F.relu(self.pre_acts(x - self.b_dec))
        x_hat = f @ self.W_dec + self.b_dec
        mse = (x - x_hat).pow(2).sum(1).mean()
        l1 = (f * self.W_dec.norm(dim=1)).sum(1).mean()
        fired = (f > 0).any(0)
        return StepOutput(mse + self.spec.l1 * l1, mse.detach(), float((f > 0).sum(1).float().mean()), fired)

    def _codes(self, x_c: torch.Tensor, z: torch.Tensor, selection) -> SparseCodes:
        rows, cols, offsets = selection
        vals = F.relu(encode_sparse(x_c, self.W_enc, self.b_enc, z, rows, cols, offsets))
        return SparseCodes(rows, cols, vals, offsets)

    def _sparse(self, x: torch.Tensor, dead_N: torch.Tensor | None) -> StepOutput:
        spec = self.spec
        x_c = x - self.b_dec
        with torch.no_grad():
            z = self.pre_acts(x_c)
        select = select_topk(z, spec.k) if spec.arch == "topk" else select_batch_topk(z, spec.k)
        codes = self._codes(x_c, z, select)
        total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        if spec.arch == "matryoshka":
            # Prefix reconstructions share one sparse code; each adds the latents of its level.
            partial = torch.zeros_like(x) + self.b_dec
            main = x.new_zeros(())
            lo = 0
            for m, w in zip(spec.levels, spec.level_weights()):
                in_level = (codes.cols >= lo) & (codes.cols < m)
                partial = partial + decode_sparse(codes, self.W_dec, codes.vals * in_level)
                main = main + w * (x - partial).pow(2).sum()
                lo = m
            x_hat = partial
        else:
            x_hat = decode_sparse(codes, self.W_dec) + self.b_dec
            main = None
        e = x - x_hat
        sse = e.pow(2).sum()
        loss = (sse if main is None else main) / total_var
        aux = 0.0
        if dead_N is not None and bool(dead_N.any()):
            aux_codes = self._codes(x_c, z, select_topk_among(z, dead_N, spec.aux_k))
            e_hat = decode_sparse(aux_codes, self.W_dec)
            target = e.detach()
            l_aux = (target - e_hat).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
            loss = loss + spec.aux_alpha * l_aux
            aux = float(l_aux.detach())
        if spec.arch != "topk":
            self._update_threshold(codes.vals.detach())
        fired = torch.zeros(spec.n, dtype=torch.bool, device=x.device)
        fired[codes.cols[codes.vals > 0]] = True
        l0 = float((codes.vals > 0).sum()) / x.shape[0]
        return StepOutput(loss, sse.detach() / x.shape[0], l0, fired, aux)

    @torch.no_grad()
    def _update_threshold(self, vals: torch.Tensor) -> None:
        pos = vals[vals > 0]
        if not len(pos):
            return
        m = pos.min().double()
        self.threshold.copy_(m if self.threshold < 0 else THRESHOLD_MOMENTUM * self.threshold + (1 - THRESHOLD_MOMENTUM) * m)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each feature's gradient its component along the feature."""
        g, W = self.W_dec.grad, self.W_dec
        if g is not None:
            g -= (g * W).sum(1, keepdim=True) * W

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Put every feature back on the unit sphere after an optimiser step."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def track_firing(self, fired_N: torch.Tensor, n_tokens: int) -> None:
        """Count tokens since each latent last fired (for dead latents and AuxK)."""
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired_N] = 0


def optimise(sae: TrainingSAE, opt: torch.optim.Optimizer, x_BD: torch.Tensor, dead_N: torch.Tensor | None,
             clip: float) -> StepOutput:
    """One training step of one SAE on a scaled batch: loss, backward, constrained Adam step.

    A non-finite loss skips the update (the caller stops the run); ``loss`` comes back detached.
    """
    out = sae(x_BD, dead_N)
    if not torch.isfinite(out.loss):
        out.loss = out.loss.detach()
        return out
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    sae.project_decoder_grad()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), clip)
    opt.step()
    sae.normalize_decoder()
    sae.track_firing(out.fired_N, len(x_BD))
    out.loss = out.loss.detach()
    return out


@torch.no_grad()
def resample_dead(sae: TrainingSAE, x_BD: torch.Tensor, dead_N: torch.Tensor, gen: torch.Generator,
                  opt: torch.optim.Adam) -> int:
    """Anthropic's resampling: point dead latents at inputs drawn ∝ their squared reconstruction loss.

    Returns how many latents were re-initialised. Their Adam moments are reset.
    """
    dead = dead_N.nonzero().squeeze(1)
    if not len(dead) or sae.spec.arch != "relu":
        return 0
    x_c = x_BD - sae.b_dec
    x_hat = F.relu(sae.pre_acts(x_c)) @ sae.W_dec + sae.b_dec
    loss_B = (x_BD - x_hat).pow(2).sum(1)
    probs = loss_B.pow(2).double().cpu()
    if not torch.isfinite(probs).all() or probs.sum() <= 0:
        return 0
    pick = torch.multinomial(probs, len(dead), replacement=True, generator=gen).to(x_BD.device)
    v = x_c[pick]
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead_N
    enc_norm = sae.W_enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0, device=v.device)
    sae.W_dec[dead] = v
    sae.W_enc[dead] = v * 0.2 * enc_norm
    sae.b_enc[dead] = 0.0
    for p in (sae.W_dec, sae.W_enc, sae.b_enc):
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][dead] = 0.0
    sae.tokens_since_fired[dead] = 0
    return len(dead)
