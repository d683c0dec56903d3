"""The SAE for inference on raw activations: what training exports and what analysis loads.

SAELens's names, and the training SAE's orientation: one row per latent in both matrices, ``W_enc``
(d_sae, d_in), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in). Files keep each tool's own
orientation (SAELens's ``W_enc`` is (d_in, d_sae)); each format's reader turns it into this one.
Importing this module imports torch and nothing of training.
"""

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clipsae.errors import ClipsaeError
from clipsae.host_sync import declared
from clipsae.train.codes import SparseCodes, row_offsets
from clipsae.train.topk import topk_sorted


def _relu(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    return SparseCodes.from_mask(z_BN, z_BN > 0)


def positive_codes(vals_BK: torch.Tensor, cols_BK: torch.Tensor) -> SparseCodes:
    """Codes of the positive ones of each row's K selected values: where fewer than K pre-activations are
    positive, the rest are zeros, not codes."""
    B, K = vals_BK.shape
    keep = vals_BK > 0
    rows = torch.arange(B, device=vals_BK.device).repeat_interleave(K).view_as(keep)[keep]
    return SparseCodes(rows, cols_BK[keep], vals_BK[keep], row_offsets(rows, B))


def _topk(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    return positive_codes(*topk_sorted(z_BN, model.k))


def _every_row(cols_BK: torch.Tensor, vals_BK: torch.Tensor) -> SparseCodes:
    """Codes with the same number of entries, K, on every row: latents ``cols_BK`` with values ``vals_BK``."""
    B, K = cols_BK.shape
    rows = torch.arange(B, device=cols_BK.device).repeat_interleave(K)
    return SparseCodes(rows, cols_BK.reshape(-1), vals_BK.reshape(-1), row_offsets(rows, B))


def _topk_signed(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    # CLIP-Scope's TopK: the k largest pre-activations whatever their sign, no ReLU.
    vals_BK, cols_BK = topk_sorted(z_BN, model.k)
    return _every_row(cols_BK, vals_BK)


def _topk_abs(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    # MSAE's TopKabs: the k largest |z|, coded as |z| (the sign is dropped, not kept).
    vals_BK, cols_BK = topk_sorted(z_BN.abs(), model.k)
    return _every_row(cols_BK, vals_BK)


def _topk_magnitude(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    # The PCA baseline's code: the k projections of largest magnitude, kept with their sign.
    cols_BK = topk_sorted(z_BN.abs(), model.k)[1]
    return _every_row(cols_BK, z_BN.gather(1, cols_BK))


def _onehot(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    # The k-means baseline's code: the latent of largest z (the nearest centroid, with z = x·c − ‖c‖²/2), value 1.
    nearest = z_BN.argmax(1, keepdim=True)
    return _every_row(nearest, torch.ones(nearest.shape, dtype=z_BN.dtype, device=z_BN.device))


SEMINMF_EPS = 1e-8
SEMINMF_ITERATIONS = 300  # saev's inference iterations


def seminmf_solve(xD_BN: torch.Tensor, D_ND: torch.Tensor, iterations: int) -> torch.Tensor:
    """Non-negative codes z (B, N) with x ≈ z·D, from xDᵀ: saev's semi-NMF solver. It starts from the
    least-squares codes clamped to ε and takes ``iterations`` multiplicative updates
    z ← z·√((xDᵀ)⁺ + z(DDᵀ)⁻) / ((xDᵀ)⁻ + z(DDᵀ)⁺ + ε)), which keep z positive and lower ‖x − zD‖²."""
    G = D_ND @ D_ND.T
    eye = torch.eye(len(G), dtype=G.dtype, device=G.device)
    z = (xD_BN @ torch.linalg.solve(G + SEMINMF_EPS * eye, eye)).clamp_min(SEMINMF_EPS)
    pos, neg = xD_BN.clamp_min(0), (-xD_BN).clamp_min(0)
    G_pos, G_neg = G.clamp_min(0), (-G).clamp_min(0)
    for _ in range(iterations):
        z = z * torch.sqrt((pos + z @ G_neg) / (neg + z @ G_pos + SEMINMF_EPS))
    return z


def _seminmf(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    # The NMF baseline's code: the semi-NMF solution for x (z_BN = x·Dᵀ), dense: keeping only its largest
    # entries would break the cancellations of an unconstrained dictionary and ruin the reconstruction.
    z = seminmf_solve(z_BN, model.W_dec, int(model.cfg.get("encode_iterations", SEMINMF_ITERATIONS)))
    return SparseCodes.from_mask(z, z > 0)


def _groupmax(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    # sparsify's "groupmax": the latents in k contiguous groups of n/k, and the largest of each group's
    # ReLU(z) its one code (zeros are not codes).
    vals_BK, within_BK = F.relu(z_BN).unflatten(-1, (model.k, -1)).max(-1)
    width = z_BN.shape[-1] // model.k
    return positive_codes(vals_BK, within_BK + torch.arange(0, z_BN.shape[-1], width, device=z_BN.device))


def _matching_pursuit(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    # MP-SAE's code (train/archs/mp.py): z_BN = (x − b_dec)·W_encᵀ are the correlations with the atoms
    # (W_enc = s·D, W_dec = D/s, so W_enc[j]·W_decᵀ is atom j's row of the atoms' Gram matrix); k greedy
    # picks of the largest, each added to the code and its Gram row times its value taken off the rest.
    c = z_BN.clone()
    f = torch.zeros_like(z_BN)
    for _ in range(model.k):
        v, j = c.max(1)
        f.scatter_add_(1, j[:, None], v[:, None])
        c -= v[:, None] * (model.W_enc[j] @ model.W_dec.T)
    return SparseCodes.from_mask(f, f != 0)


def _jumprelu(model: "SparseAutoencoder", z_BN: torch.Tensor) -> SparseCodes:
    return SparseCodes.from_mask(z_BN, (z_BN > model.threshold) & (z_BN > 0))


@dataclass(frozen=True)
class Activation:
    """How an inference architecture turns pre-activations into codes, and what it needs."""

    codes: Callable[["SparseAutoencoder", torch.Tensor], SparseCodes]
    needs_k: bool = False
    needs_threshold: bool = False
    one_per_row: bool = False  # exactly one active latent per row
    dense: bool = False  # every latent may be active on every row


# The inference forms SAEs are saved as: ReLU, TopK and JumpReLU (SAELens's names), and the TopK
# without a ReLU that CLIP-Scope published (its codes may be negative).
ACTIVATIONS = {
    "standard": Activation(_relu),
    "topk": Activation(_topk, needs_k=True),
    "topk_signed": Activation(_topk_signed, needs_k=True),
    "topk_abs": Activation(_topk_abs, needs_k=True),
    "topk_magnitude": Activation(_topk_magnitude, needs_k=True),
    "onehot": Activation(_onehot, one_per_row=True),
    "seminmf": Activation(_seminmf, dense=True),
    "jumprelu": Activation(_jumprelu, needs_threshold=True),
    "mp": Activation(_matching_pursuit, needs_k=True),
    "groupmax": Activation(_groupmax, needs_k=True),
}


# How an SAE's inputs are normalised before encoding, and its reconstructions mapped back (the tool
# that trained it did so): per row (ViT-Prisma's ``constant_norm_rescale`` and ``layer_norm``) or
# with fixed statistics (``affine``: x' = (x − mean)·scale, as MSAE's mean_center and scaling_factor).
INPUT_NORMS = ("none", "constant_norm_rescale", "layer_norm", "affine")
_LN_EPS = 1e-5


class SparseAutoencoder(nn.Module):
    """An SAE on raw activations: ``encode`` (dense codes), ``encode_sparse``, ``decode``, ``forward``.

    ``architecture`` is ``standard`` (f = ReLU(z)), ``topk`` (the k largest of ReLU(z)),
    ``topk_signed`` (the k largest of z, negative ones included), ``topk_abs`` (the k largest |z|, coded as |z|),
    ``topk_magnitude`` (the k largest |z|, coded as z: the PCA baseline), ``onehot`` (1 at the largest z: the
    k-means baseline), ``seminmf`` (the non-negative z with x ≈ z·W_dec, dense: the NMF baseline),
    ``jumprelu`` (f = ReLU(z)·1[z > threshold], per latent), ``mp`` (k greedy matching-pursuit picks
    against the residual, from z as the correlations: the MP-SAE) or ``groupmax`` (the largest ReLU(z) of
    each of k contiguous groups of latents: sparsify's), with
    z = (x − b_dec·apply_b_dec_to_input) W_encᵀ + b_enc, scaled by ‖W_dec row‖ when
    ``rescale_acts_by_decoder_norm`` (a SAELens TopK option; decoding then divides by it).
    ``identity`` says where the weights came from (path, format, sha256) once loaded from disk.

    ``input_norm`` (:data:`INPUT_NORMS`) is applied to x before z is computed: codes and ``decode``
    live in the normalised space, and ``reconstruct_sparse``/``forward`` map back to raw activations.
    ``constant_norm_rescale``: x' = x·√d/‖x‖; ``layer_norm``: x' = (x − mean(x))/(std(x) + 1e-5),
    mapped back as x̂·std + mean (ViT-Prisma's two); ``affine``: x' = (x − norm_mean)·norm_scale.
    ``soft_cap`` c > 0 caps each code as c·tanh(f/c) (MSAE's); the cap keeps zeros zero and order.
    """

    def __init__(self, architecture: str, W_enc, b_enc, W_dec, b_dec, k: int | None = None, threshold=None,
                 cfg: dict | None = None, apply_b_dec_to_input: bool = True,
                 rescale_acts_by_decoder_norm: bool = False, input_norm: str = "none", norm_mean=None, norm_scale=None,
                 soft_cap: float = 0.0):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ClipsaeError(f"input normalisation {input_norm!r} is not one of {', '.join(INPUT_NORMS)}")
        if input_norm == "affine" and (norm_mean is None or norm_scale is None):
            raise ClipsaeError("an affine input normalisation needs its mean and scale")
        if architecture not in ACTIVATIONS:
            raise ClipsaeError(f"unsupported SAE architecture {architecture!r}; clipsae reads {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[architecture]
        if act.needs_k and not (isinstance(k, int) and 0 < k <= W_enc.shape[0]):
            raise ClipsaeError(f"a {architecture} SAE needs k between 1 and d_sae={W_enc.shape[0]}, not {k!r}")
        if act.needs_threshold and threshold is None:
            raise ClipsaeError(f"a {architecture} SAE needs a threshold")
        d_sae, d_in = W_enc.shape
        for name, t, shape in (("b_enc", b_enc, (d_sae,)), ("W_dec", W_dec, (d_sae, d_in)), ("b_dec", b_dec, (d_in,))):
            if tuple(t.shape) != shape:
                raise ClipsaeError(f"{name} has shape {tuple(t.shape)}; with W_enc {tuple(W_enc.shape)} it must be {shape}")
        self.architecture, self.k, self.cfg = architecture, k, cfg or {}
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.rescale_acts_by_decoder_norm = rescale_acts_by_decoder_norm
        self.identity: dict = {}
        self._activation = act
        # Contiguous rows whatever the file's orientation: the product's bits depend on the layout, and
        # an SAE must encode alike however it was loaded.
        self.W_enc = nn.Parameter(W_enc.contiguous())
        self.b_enc = nn.Parameter(b_enc)
        self.W_dec = nn.Parameter(W_dec.contiguous())
        self.b_dec = nn.Parameter(b_dec)
        if threshold is not None:
            self.register_buffer("threshold", torch.as_tensor(threshold, dtype=W_enc.dtype).expand(d_sae).clone())
        self.input_norm = "none"
        self.soft_cap = float(soft_cap)
        if input_norm == "affine":
            self.set_affine_input_norm(norm_mean, norm_scale)
        self.input_norm = input_norm

    def recorded(self, key: str):
        """A setting the SAE's files record (clipsae's section of its cfg, then the tool's own fields:
        SAELens's ``metadata``/``meta``), or None."""
        for where in (self.cfg.get("clipsae", {}), self.cfg, self.cfg.get("metadata", {}), self.cfg.get("meta", {})):
            if isinstance(where, dict) and where.get(key):
                return where[key]
        return None

    @property
    def max_active(self) -> int | None:
        """The most latents a row can have active (k, or 1), or None where any number may be."""
        if self._activation.dense:
            return self.d_sae
        return self.k if self._activation.needs_k else 1 if self._activation.one_per_row else None

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[0]

    def set_affine_input_norm(self, mean, scale) -> None:
        """Standardise inputs as x' = (x − mean)·scale (per dimension or scalar), for an SAE that had none."""
        if self.input_norm != "none":
            raise ClipsaeError(f"this SAE already normalises its inputs ({self.input_norm}); a second normalisation "
                               f"would not be the one it was trained with")
        dtype, d = self.W_enc.dtype, self.d_in
        self.register_buffer("norm_mean", torch.as_tensor(mean, dtype=dtype, device=self.W_enc.device).expand(d).clone())
        self.register_buffer("norm_scale", torch.as_tensor(scale, dtype=dtype, device=self.W_enc.device).expand(d).clone())
        self.input_norm = "affine"

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(x in the SAE's input space, what :meth:`denormalize` needs to map a reconstruction back)."""
        x = x.to(self.W_enc.dtype)
        if self.input_norm == "constant_norm_rescale":
            c = self.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            return x * c, (c,)
        if self.input_norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return (x - mu) / (std + _LN_EPS), (mu, std)
        if self.input_norm == "affine":
            return (x - self.norm_mean) * self.norm_scale, ()
        return x, ()

    def denormalize(self, x_hat: torch.Tensor, ctx: tuple) -> torch.Tensor:
        """A reconstruction in the SAE's input space mapped back to raw activations."""
        if self.input_norm == "constant_norm_rescale":
            return x_hat / ctx[0]
        if self.input_norm == "layer_norm":
            return x_hat * ctx[1] + ctx[0]
        if self.input_norm == "affine":
            return x_hat / self.norm_scale + self.norm_mean
        return x_hat

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """z (..., d_sae) of raw activations (..., d_in)."""
        x = self.normalize(x)[0]
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        z = x @ self.W_enc.T + self.b_enc
        return z * self.W_dec.norm(dim=1) if self.rescale_acts_by_decoder_norm else z

    def encode_sparse(self, x_BD: torch.Tensor) -> SparseCodes:
        """The active latents of each row of ``x_BD``, without a dense (rows, d_sae) code matrix."""
        z = self.pre_acts(x_BD)
        with declared("inference codes keep only their positive values, and how many there are sizes them"):
            codes = self._activation.codes(self, z)
        if self.soft_cap > 0:
            codes = SparseCodes(codes.rows, codes.cols, self.soft_cap * torch.tanh(codes.vals / self.soft_cap),
                                codes.offsets)
        return codes

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes (..., d_sae) of raw activations (..., d_in)."""
        flat = x.reshape(-1, self.d_in)
        return self.encode_sparse(flat).to_dense(self.d_sae).reshape(*x.shape[:-1], self.d_sae)

    def _decoder_scale(self, f: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        if not self.rescale_acts_by_decoder_norm:
            return f
        norms = self.W_dec.norm(dim=1)
        return f / (norms if cols is None else norms[cols])

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., d_in) of dense codes (..., d_sae)."""
        return self._decoder_scale(f.to(self.W_dec.dtype)) @ self.W_dec + self.b_dec

    def decode_sparse(self, codes: SparseCodes) -> torch.Tensor:
        """Reconstruction (B, d_in) of sparse codes: Σ_j vals[j]·W_dec[cols[j]] + b_dec."""
        w = self._decoder_scale(codes.vals.to(self.W_dec.dtype), codes.cols)
        return F.embedding_bag(codes.cols, self.W_dec, codes.offsets, mode="sum", per_sample_weights=w) + self.b_dec

    def reconstruct_sparse(self, x_BD: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
        """The reconstruction of raw rows ``x_BD`` from their ``codes``, in raw activations' space."""
        if self.input_norm == "none":
            return self.decode_sparse(codes)
        return self.denormalize(self.decode_sparse(codes), self.normalize(x_BD)[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations (..., d_in) reconstructed."""
        return self.denormalize(self.decode(self.encode(x)), self.normalize(x)[1])
