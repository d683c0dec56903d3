"""The training kernels that touch only the active latents: choosing them (TopK, BatchTopK, TopK
among some columns; the two-pass top-k itself is ``train/topk.py``, shared with inference), the
encoder's gathered linear map with its backward, and the decoder.

The codes themselves (``SparseCodes``, COO sorted by row) live in ``train/codes.py``, shared with
inference. With nnz active latents in a batch, the decoder and the encoder's backward cost nnz·d
instead of B·n·d.
"""

import warnings

import torch
import torch.nn.functional as F

from clipsae.train.codes import SparseCodes, row_offsets
from clipsae.train.topk import topk_columns


def select_topk(z_BN: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, offsets) of the k largest pre-activations of each row."""
    B = z_BN.shape[0]
    cols = topk_columns(z_BN, k).reshape(-1)
    rows = torch.arange(B, device=z_BN.device).repeat_interleave(k)
    offsets = torch.arange(0, B * k, k, device=z_BN.device)
    return rows, cols, offsets


def select_batch_topk(z_BN: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, offsets) of the k·B largest pre-activations of the whole batch.

    Always k·B entries, so nothing waits on the device for a count: where fewer than k·B are
    positive, the rest are kept too and their codes, ReLU(z) = 0, add nothing to the loss or
    its gradients (callers count a latent active only where its code is positive).
    """
    B, n = z_BN.shape
    idx = topk_columns(z_BN.reshape(1, -1), k * B)[0].sort().values
    rows, cols = idx // n, idx % n
    return rows, cols, row_offsets(rows, B)


def select_topk_in(z_BN: torch.Tensor, cols_C: torch.Tensor, k: int):
    """(rows, cols, offsets) of the k largest pre-activations of each row among the latents ``cols_C``.

    Only those columns are gathered and ranked (AuxK's dead latents are usually a small share of
    the dictionary), instead of masking and ranking the full width.
    """
    rows, sub, offsets = select_topk(z_BN.index_select(1, cols_C), min(k, len(cols_C)))
    return rows, cols_C[sub], offsets


def _b_dec_grad(grad_b_enc_N: torch.Tensor, W_enc_ND: torch.Tensor) -> torch.Tensor:
    """dL/db_dec through the encoder, x̃ = x − b_dec: −Σ_rows Σ_latents g·W_enc[latent] = −(Σ_rows g)·W_enc,
    that is minus the encoder bias's gradient times W_enc: an n·d product, not a per-row (B, d) one."""
    return -(grad_b_enc_N.to(W_enc_ND.dtype) @ W_enc_ND)


class _GatheredLinear(torch.autograd.Function):
    """vals[j] = ((x − b_dec)[rows[j]] · W_enc[cols[j]]) + b_enc[cols[j]], with values already computed.

    The forward takes the values from the dense pre-activations (the matmul every SAE needs);
    the backward touches only the nnz selected entries. ``x`` is data: its own gradient is not made.
    """

    @staticmethod
    def forward(ctx, z_BN, x_c, b_dec, W_enc, b_enc, rows, cols, offsets):
        ctx.save_for_backward(x_c, W_enc, rows, cols, offsets)
        return z_BN[rows, cols].to(x_c.dtype)

    @staticmethod
    def backward(ctx, g):
        x_c, W_enc, rows, cols, offsets = ctx.saved_tensors
        n, B = W_enc.shape[0], x_c.shape[0]
        g = g.to(x_c.dtype)
        grad_W = grad_b = grad_b_dec = None
        if ctx.needs_input_grad[3]:
            # dL/dW_enc = Sᵀ X with S the (B, n) sparse gradient of the codes, as CSR by latent
            # (measured 1.6x faster than a coalesced COO product here).
            order = torch.argsort(cols, stable=True)
            # Row pointers by binary search of the sorted latents: unlike bincount, no read back
            # to the host to size the result, so the backward never waits on the device.
            crow = torch.searchsorted(cols[order], torch.arange(n + 1, device=cols.device))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta"
                S_NB = torch.sparse_csr_tensor(crow, rows[order], g[order], (n, B), check_invariants=False)
            grad_W = S_NB @ x_c
        if ctx.needs_input_grad[4] or ctx.needs_input_grad[2]:
            grad_b = torch.zeros(n, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        if ctx.needs_input_grad[2]:
            grad_b_dec = _b_dec_grad(grad_b, W_enc)
        return None, None, grad_b_dec, grad_W, grad_b if ctx.needs_input_grad[4] else None, None, None, None


def encode_sparse(x_c_BD: torch.Tensor, b_dec_D: torch.Tensor, W_enc_ND: torch.Tensor, b_enc_N: torch.Tensor,
                  z_BN: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Selected pre-activations z[rows, cols] as a differentiable (nnz,) tensor with a sparse backward.

    ``x_c_BD`` is x − b_dec computed without gradient (x is data), ``z_BN`` equals ``x_c @ W_encᵀ + b_enc``
    (computed without gradient); the gradient reaches W_enc, b_enc and b_dec.
    """
    return _GatheredLinear.apply(z_BN, x_c_BD, b_dec_D, W_enc_ND, b_enc_N, rows, cols, offsets)


class _GatheredColumns(torch.autograd.Function):
    """z[:, cols] = (x − b_dec) W_enc[cols]ᵀ + b_enc[cols] as a dense (B, C) block, its values taken from
    the pre-activations already computed; the backward is a dense product over those C columns (in bf16
    where the step's matmuls are), and b_dec's n·d one."""

    @staticmethod
    def forward(ctx, z_BN, x_c, b_dec, W_enc, b_enc, cols, bf16):
        ctx.save_for_backward(x_c, W_enc, cols)
        ctx.bf16 = bf16
        return z_BN.index_select(1, cols).to(x_c.dtype)

    @staticmethod
    def backward(ctx, g_BC):
        x_c, W_enc, cols = ctx.saved_tensors
        g_BC = g_BC.to(x_c.dtype)
        n = W_enc.shape[0]
        grad_W = grad_b = grad_b_dec = None
        if ctx.needs_input_grad[3]:
            product = (g_BC.T.bfloat16() @ x_c.bfloat16()).to(W_enc.dtype) if ctx.bf16 else g_BC.T @ x_c
            grad_W = torch.zeros_like(W_enc).index_add_(0, cols, product)
        col_sums = g_BC.sum(0)
        if ctx.needs_input_grad[4]:
            grad_b = torch.zeros(n, dtype=g_BC.dtype, device=g_BC.device).index_add_(0, cols, col_sums)
        if ctx.needs_input_grad[2]:
            grad_b_dec = _b_dec_grad(col_sums, W_enc.index_select(0, cols))
        return None, None, grad_b_dec, grad_W, grad_b, None, None


def encode_columns(x_c_BD: torch.Tensor, b_dec_D: torch.Tensor, W_enc_ND: torch.Tensor, b_enc_N: torch.Tensor,
                   z_BN: torch.Tensor, cols_C: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The pre-activations of the latents ``cols_C``, (B, C), differentiable; ``z_BN`` as for :func:`encode_sparse`.
    ``bf16``: the encoder's gradient product in bf16 (the step's ``--precision bf16``)."""
    return _GatheredColumns.apply(z_BN, x_c_BD, b_dec_D, W_enc_ND, b_enc_N, cols_C, bf16)


def decode_sparse(codes: SparseCodes, W_dec_ND: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_j vals[j]·W_dec[cols[j]] per row, as (B, d), via ``embedding_bag``; no bias.

    ``weights`` (nnz) replaces ``vals`` where given (used to mask Matryoshka prefixes).
    """
    w = codes.vals if weights is None else weights
    return F.embedding_bag(codes.cols, W_dec_ND, codes.offsets, mode="sum", per_sample_weights=w.to(W_dec_ND.dtype))
