"""The plain dense formulation of a TopK / BatchTopK SAE forward pass.

It materialises the (B, n) code matrix and multiplies it by the whole decoder: B·n·d work.
It is the reference the sparse kernels are tested against and the baseline of bench/train_step.py.
"""

import torch
import torch.nn.functional as F


def dense_codes(z_BN: torch.Tensor, k: int, batch: bool = False) -> torch.Tensor:
    """TopK_k(ReLU(z)) per row, or over the whole batch (k·B values) when ``batch``."""
    f = F.relu(z_BN)
    if batch:
        flat = f.reshape(-1)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(k * z_BN.shape[0]).indices] = True
        return (flat * keep).reshape(f.shape)
    top = f.topk(k, dim=1)
    return torch.zeros_like(f).scatter(1, top.indices, top.values)


def dense_forward(x_BD, W_enc_ND, b_enc_N, W_dec_ND, b_dec_D, k: int, batch: bool = False):
    """(x̂, f) of a TopK (or BatchTopK) SAE, computed densely."""
    f = dense_codes(F.linear(x_BD - b_dec_D, W_enc_ND, b_enc_N), k, batch)
    return f @ W_dec_ND + b_dec_D, f
