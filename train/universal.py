"""Universal SAEs: one set of n latents shared by M models, an encoder and a decoder per model.

The training rows are the models' activations of the same image (and token) side by side,
x = [x_1 | … | x_M] (train/universal_data.py), each model's block scaled on its own to E‖x_m‖ = √d_m.
The SAE is an ordinary TrainingSAE over x whose encoder is read block by block: model m's pre-activations
are z_m = (x_m − b_dec,m) W_enc,mᵀ + b_enc,m, with W_enc,m the columns of W_enc over block m and b_enc
one row per model (M, n). The decoder is one matrix over the whole row, so latent i's atom D[i] =
[D_1[i] | … | D_M[i]] has unit norm as a whole: ‖D_m[i]‖² is model m's share of its energy, and the
shares sum to 1 (a latent all of one model's is that model's own; one shared evenly is universal).

A step, for every source model s (all sources each step, not one drawn at random as USAE does: every
encoder and every decoder learns from every batch, and the step needs no random state to resume):
- the latents are selected, either ``global`` (SPARC's Global TopK: the architecture's selection over the
  models' summed pre-activations Σ_m z_m, one set of latents per row shared by all sources) or ``own``
  (each source's own selection over z_s); source s's codes are f_s = ReLU(z_s) on the selected latents;
- f_s is decoded through every model's decoder, x̂_{s→t} = f_s D_t + b_dec,t;
- the loss is the mean over the M² pairs (s, t) of ‖x_t − x̂_{s→t}‖² / Σ‖x_t − x̄_t‖² (each model's
  reconstruction normalised by its own variance, so each counts alike whatever its width), with
  Matryoshka's prefix levels where the architecture has them, plus α·AuxK on each source's residual.
Global selection is the default: with each model's own TopK a concept can land on a different latent per
model (docs/sae.md measures both). At inference each model's SAE is an ordinary SAE (its own TopK, or a
JumpReLU threshold of its own for BatchTopK and Matryoshka), saved under ``models/<m>``.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipsae.files import write_json
from clipsae.train.archs.base import StepOutput
from clipsae.train.codes import SparseCodes
from clipsae.train.metrics import DENSE_ABOVE, cross_fvu
from clipsae.train.model import SparseAutoencoder
from clipsae.train.ranks import Ranks
from clipsae.train.sparse import decode_sparse, encode_columns, encode_sparse

SELECTIONS = ("global", "own")
UNIVERSAL_FILE = "universal.json"  # written last: a universal SAE's folder is whole when it is there
MODELS_DIR = "models"
THRESHOLD_MOMENTUM = 0.99  # BatchTopK's, per model


def slices(spec) -> list[slice]:
    """Each model's columns of a joined row."""
    out, lo = [], 0
    for d in spec.blocks:
        out.append(slice(lo, lo + d))
        lo += d
    return out


def setup(sae) -> None:
    """The per-model state of a universal SAE: an encoder bias per model and a threshold per model."""
    M, n = len(sae.spec.blocks), sae.spec.d_sae
    del sae.b_enc
    sae.b_enc = nn.Parameter(torch.zeros(M, n))
    sae.register_buffer("model_threshold", torch.full((M,), -1.0, dtype=torch.float64))


def _reconstructions(sae, codes: SparseCodes) -> list[tuple[float, torch.Tensor]]:
    """(weight, x̂ over the whole row) per prefix level of the architecture (one level, weight 1, but Matryoshka's)."""
    out, partial, lo = [], sae.b_dec, 0
    for m, w in sae.arch.prefixes(sae.spec):
        in_level = (codes.cols >= lo) & (codes.cols < m)
        partial = partial + decode_sparse(codes, sae.W_dec, codes.vals * in_level)
        out.append((w, partial))
        lo = m
    return out


def loss(sae, x: torch.Tensor, dead_C: torch.Tensor | None, ranks: Ranks = Ranks()) -> StepOutput:
    """The universal step's loss (module docstring) of a batch of joined, scaled rows, with the sparse kernels of
    the TopK family: each model's pre-activations computed without gradient, the selected ones differentiable."""
    spec, arch = sae.spec, sae.arch
    parts = slices(spec)
    M, B = len(parts), len(x)
    W_enc = [sae.W_enc[:, s].contiguous() for s in parts]  # differentiable copies: gradients reach W_enc
    b_dec = [sae.b_dec[s] for s in parts]
    with torch.no_grad():
        x_c = [x[:, s] - sae.b_dec[s] for s in parts]
        z = [torch.addmm(sae.b_enc[m], x_c[m], W_enc[m].T) for m in range(M)]
        if spec.selection == "global":
            selections = [arch.select(torch.stack(z).sum(0), spec.k)] * M
        else:
            selections = [arch.select(z[m], spec.k) for m in range(M)]
    codes = []
    for m, (rows, cols, offsets) in enumerate(selections):
        vals = F.relu(encode_sparse(x_c[m], b_dec[m], W_enc[m], sae.b_enc[m], z[m], rows, cols, offsets))
        codes.append(SparseCodes(rows, cols, vals, offsets))
    var = [ranks.total_variance(x[:, s]) for s in parts]
    main = x.new_zeros(())
    sse = x.new_zeros(())
    aux = x.new_zeros(())
    aux_loss = x.new_zeros(())
    for src, c in enumerate(codes):
        levels = _reconstructions(sae, c)
        for w, x_hat in levels:
            for t, s in enumerate(parts):
                main = main + w * (x[:, s] - x_hat[:, s]).pow(2).sum() / var[t]
        x_hat = levels[-1][1]
        sse = sse + (x[:, parts[src]] - x_hat[:, parts[src]]).detach().pow(2).sum()
        if dead_C is not None and len(dead_C):
            e = (x - x_hat).detach()
            k_aux = min(spec.aux_k, len(dead_C))
            z_BC = encode_columns(x_c[src], b_dec[src], W_enc[src], sae.b_enc[src], z[src], dead_C, sae.bf16_matmul)
            top = z_BC.detach().topk(k_aux, dim=1, sorted=False).indices
            f_aux = torch.zeros_like(z_BC).scatter(1, top, F.relu(z_BC.gather(1, top)))
            l_aux = (e - f_aux @ sae.W_dec.index_select(0, dead_C)).pow(2).sum() / ranks.total_variance(e)
            aux_loss = aux_loss + spec.aux_alpha * l_aux
            aux = aux + l_aux.detach() / M
    _track_thresholds(sae, z)
    active = [(c.vals > 0) for c in codes]
    l0 = torch.stack([a.sum() for a in active]).float().mean() / B
    fired = torch.zeros(spec.d_sae, dtype=torch.bool, device=x.device)
    for c, a in zip(codes, active):
        fired |= torch.zeros(spec.d_sae, dtype=torch.uint8, device=x.device).scatter_reduce_(
            0, c.cols, a.to(torch.uint8), "amax").bool()
    return StepOutput(main / (M * M) + aux_loss / M, sse / B, l0, fired, aux)


@torch.no_grad()
def _track_thresholds(sae, z: list[torch.Tensor]) -> None:
    # Each model's inference threshold, for the architectures saved as JumpReLU: the running mean (BatchTopK's
    # momentum) of the smallest of the k·B largest ReLU(z_m) of the batch, what BatchTopK would keep of model m
    # alone, so that each model's SAE on its own fires about k latents per row. (The codes of the global
    # selection would not do: a latent the other models' evidence selected may have a tiny z_m.)
    if sae.arch.export_as != "jumprelu":
        return
    for m, zm in enumerate(z):
        kth = torch.topk(zm.flatten(), min(sae.spec.k * len(zm), zm.numel()), sorted=False).values.min().double()
        low = kth.clamp_min(0.0)
        old = sae.model_threshold[m]
        sae.model_threshold[m] = torch.where(old < 0, low, THRESHOLD_MOMENTUM * old + (1 - THRESHOLD_MOMENTUM) * low)


@torch.no_grad()
def inference_models(sae, scale: float, factors: list[float]) -> list[SparseAutoencoder]:
    """Each model's SAE on its raw activations: block m of the universal SAE, whose inputs were c_m·s·x_m."""
    out = []
    options = sae.arch.export_options(sae)
    for m, s in enumerate(slices(sae.spec)):
        c = scale * factors[m]
        opts = dict(options)
        if "threshold" in opts:
            opts["threshold"] = torch.full((sae.spec.d_sae,), float(max(sae.model_threshold[m].item(), 0.0)))
        out.append(SparseAutoencoder(sae.arch.export_as, (sae.W_enc[:, s] * c).float().cpu(),
                                     sae.b_enc[m].detach().float().cpu().clone(),
                                     (sae.W_dec[:, s] / c).contiguous().float().cpu(),
                                     (sae.b_dec[s] / c).float().cpu().clone(), **opts))
    return out


def evaluate_universal(sae, scale: float, factors: list[float], x_eval: torch.Tensor, evaluate) -> tuple[dict, torch.Tensor, list]:
    """(metrics, density, [(model's SAE, its metrics, its density)]) on held-out joined rows: each model's SAE on
    its own raw block, their mean FVU and L0, and the cross-reconstruction matrix."""
    models = [m.to(x_eval.device) for m in inference_models(sae, scale, factors)]
    blocks = [x_eval[:, s] / factors[m] for m, s in enumerate(slices(sae.spec))]
    per = [(model, *evaluate(model, xb)) for model, xb in zip(models, blocks)]
    metrics = {k: sum(p[1][k] for p in per) / len(per) for k in ("fvu", "l0", "mse", "cosine", "explained_variance")}
    density = torch.stack([p[2] for p in per]).amax(0)
    metrics["dead_heldout"] = int((density == 0).sum())
    metrics["dense"] = int((density > DENSE_ABOVE).sum())
    metrics["heldout_tokens"] = len(x_eval)
    metrics["models"] = [{k: v for k, v in p[1].items() if k != "density_hist"} for p in per]
    metrics["cross_fvu"] = cross_fvu(models, blocks).tolist()
    return metrics, density, per


def write_universal(out: Path, record: dict) -> None:
    """universal.json, last: it marks the folder whole."""
    write_json(out / UNIVERSAL_FILE, record)



def finished_file(spec) -> str:
    """The file whose presence says an SAE's folder is whole: cfg.json, or a universal SAE's universal.json."""
    from clipsae.train.load import CFG_FILE

    return UNIVERSAL_FILE if spec.blocks else CFG_FILE


def export_universal(cfg, data, sae, scale: float, record: dict, step: int | None = None) -> Path:
    """A universal SAE's folder: each model's SAE under ``models/<m>`` (an ordinary SAE folder, its cfg naming that
    model's store, hook and weights) and universal.json (the stores, hooks, images, factors and held-out figures)."""
    from clipsae.store.location import absolute
    from clipsae.train.export import save_sae
    from clipsae.train.metrics import plot_density
    from clipsae.train.rundir import snapshot_dir

    out = cfg.sae_dir(sae.spec) if step is None else snapshot_dir(cfg, sae.spec, step * cfg.batch_size)
    step = cfg.steps if step is None else step
    label = sae.spec.label
    per_model = record.pop("_densities", None)
    models = data.describe()
    for m, (model, desc) in enumerate(zip(inference_models(sae, scale, data.factors), models)):
        metrics = (record.get("models") or [None] * len(models))[m]
        density = per_model[m][2] if per_model is not None else None
        context = len(data.token_idx[m])
        extra = {
            "meta": {"model_name": desc["model"], "hook_name": desc["hook"], "dataset_path": str(absolute(desc["store"])),
                     "context_size": context},
            "clipsae": {"spec": sae.spec.to_json(), "label": f"{label}/models/{m}", "scale": scale * desc["factor"],
                        "hook": desc["hook"], "tokens": cfg.tokens, "model": desc["model"],
                        "pretrained": desc["pretrained"], "steps": step, "tokens_trained": step * cfg.batch_size,
                        "seed": cfg.seed, "holdout": cfg.holdout, "lr": cfg.lr_of(sae.spec),
                        "batch_size": cfg.batch_size, "universal": {"model": m, "of": len(models)}},
        }
        folder = out / MODELS_DIR / str(m)
        log10 = None if density is None else torch.log10(density + 1e-10)
        save_sae(model, folder, extra, log10, metrics)
        if density is not None:
            plot_density(density, folder / "density.png", f"{label}: model {m} ({desc['hook']}, {cfg.tokens} tokens)")
    summary = {k: v for k, v in record.items() if not k.startswith("_") and k != "density_hist"}
    write_universal(out, {"label": label, "arch": sae.spec.arch, "selection": sae.spec.selection, "d_sae": sae.spec.d_sae,
                          "k": sae.spec.k, "tokens": cfg.tokens, "images": cfg.extra["universal"]["images"],
                          "models": [{**desc, "folder": f"{MODELS_DIR}/{m}"} for m, desc in enumerate(models)],
                          "heldout": summary, "steps": step})
    return out
