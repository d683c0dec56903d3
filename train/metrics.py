"""Held-out evaluation of an SAE: reconstruction, sparsity and feature-density metrics (docs/sae.md)."""

from pathlib import Path

import numpy as np
import torch

from clipsae.train.model import SparseAutoencoder

DENSE_ABOVE = 0.1
HIST_EDGES = np.arange(-8.0, 0.25, 0.25)


@torch.no_grad()
def evaluate(model: SparseAutoencoder, x_MD: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """(metrics, density_N) of ``model`` on raw held-out rows ``x_MD`` (float32, model's device)."""
    n = model.d_sae
    # Pre-activations of a block stay near 256 MB whatever the number of latents.
    block = max(64, 2**26 // n)
    # Few active latents per row: decoded from the sparse codes (nnz·d), not a dense (block, n) × (n, d) product
    # that would cost as much as the encoder's.
    sparse = model.max_active is not None and model.max_active * 16 <= n
    mean_D = x_MD.mean(0)
    sse = var = cos = 0.0
    fires_N = torch.zeros(n, dtype=torch.float64, device=x_MD.device)
    l0_M = []
    for s in range(0, len(x_MD), block):
        x = x_MD[s : s + block]
        codes = model.encode_sparse(x)
        x_hat = model.decode_sparse(codes) if sparse else model.decode(codes.to_dense(n))
        sse += float((x - x_hat).pow(2).sum())
        var += float((x - mean_D).pow(2).sum())
        cos += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=1).sum())
        active = (codes.vals != 0).double()  # signed codes (PCA's, CLIP-Scope's) count where negative too
        fires_N.index_add_(0, codes.cols, active)
        l0_M.append(torch.zeros(len(x), dtype=torch.float64, device=x.device).index_add_(0, codes.rows, active).cpu())
    m, d = x_MD.shape
    l0 = torch.cat(l0_M).double()
    density = (fires_N / max(m, 1)).float().cpu()
    fvu = sse / var if var > 0 else float("nan")
    q = torch.quantile(l0, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist() if m else [0, 0, 0]
    metrics = {
        "heldout_tokens": m,
        "mse": sse / (m * d),
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "cosine": cos / m,
        "l0": float(l0.mean()),
        "l0_p10": q[0], "l0_p50": q[1], "l0_p90": q[2],
        "l0_max": float(l0.max()),
        "population_sparsity": float(l0.mean()) / n,
        "fraction_zero": 1 - float(l0.mean()) / n,
        "dead_heldout": int((density == 0).sum()),
        "dense": int((density > DENSE_ABOVE).sum()),
        "density_hist": density_histogram(density),
    }
    if model.architecture == "jumprelu":
        metrics["threshold"] = float(model.threshold.max())
    return metrics, density


@torch.no_grad()
def cross_fvu(models: list[SparseAutoencoder], x_blocks: list[torch.Tensor]) -> np.ndarray:
    """F[a, b]: the FVU of model b's rows ``x_blocks[b]`` reconstructed from model a's codes of the same rows
    (``x_blocks[a]``) through b's decoder; the diagonal is each model's own FVU (a universal SAE's models)."""
    codes = [m.encode_sparse(x) for m, x in zip(models, x_blocks)]
    out = np.zeros((len(models), len(models)))
    for a in range(len(models)):
        for b, (mb, xb) in enumerate(zip(models, x_blocks)):
            x_hat = mb.reconstruct_sparse(xb, codes[a])
            var = float((xb - xb.mean(0)).pow(2).sum())
            out[a, b] = float((xb - x_hat).pow(2).sum()) / var if var > 0 else float("nan")
    return out


def density_histogram(density_N: torch.Tensor) -> dict:
    """Counts of latents per log10-density bin; latents that never fired counted apart."""
    live = density_N[density_N > 0].double().log10().numpy()
    counts, _ = np.histogram(np.clip(live, HIST_EDGES[0], HIST_EDGES[-1]), bins=HIST_EDGES)
    return {"edges_log10": HIST_EDGES.tolist(), "counts": counts.tolist(), "never": int((density_N == 0).sum())}


def density_xlim(hist: dict) -> tuple[float, float]:
    """The x-range of the density plot: from half a unit below the first bin with latents (not the bins' −8) to 0."""
    nonzero = np.flatnonzero(hist["counts"])
    if not len(nonzero):
        return hist["edges_log10"][0], hist["edges_log10"][-1]
    return hist["edges_log10"][nonzero[0]] - 0.5, max(0.0, hist["edges_log10"][nonzero[-1] + 1])


def plot_density(density_N: torch.Tensor, path: Path, title: str) -> None:
    """Save the log10 feature-density histogram as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = density_histogram(density_N)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.stairs(hist["counts"], hist["edges_log10"], fill=True)
    ax.set_xlim(*density_xlim(hist))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("log10 feature density (fraction of held-out tokens)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}\n{hist['never']} latents never fired", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
