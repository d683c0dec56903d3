"""Fry's spliced check: does the model still do what it did when a hook's activations are replaced
by the SAE's reconstruction?

For each image, four forward passes to the image embedding: the original; spliced, with the codes'
tokens at the hook replaced by SAE(x) and the pass finished from there; mean-ablated, with the same
tokens replaced by their mean over the store (from the cached sums); and zero-ablated, replaced by
zeros. Reported: cos(original, spliced) and cos(original, mean-ablated) per image, and
recovered = (cos_spliced − cos_mean) / (1 − cos_mean) of the means. Where the images have labels
and the labels have class names, zero-shot accuracy (text prompt "a photo of a {class}.", the
class of largest cosine) of the original and the spliced embeddings, how often they agree, and the
downstream loss the field reports (SAELens's and ViT-Prisma's): the zero-shot cross-entropy of the
true class, CE = −log softmax(τ·cos(e, t_c))[label] with τ the model's logit scale, averaged over the
labelled images for each of the four embeddings (CE_clean, CE_sae, CE_mean, CE_zero);
ce_recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean), ce_recovered_mean the same against the
mean-ablation, and kl the mean KL(p_original ‖ p_spliced) of the zero-shot class distributions.

Residual and stage hooks are spliced inside the model with a forward hook on the module whose output
they are (the tower names it: pipeline/towers); pooled hooks (ln_post, embed, attnpool, pooled) are
spliced on the pooled vector, which then only passes through the projection.
"""

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from clipsae.analysis.class_names import class_names
from clipsae.analysis.images import iter_image_batches
from clipsae.analysis.model.joint_space import PROMPT, points_to_joint, text_embeddings
from clipsae.analysis.output import SPLICE_FILE, write_json
from clipsae.device import resolve_device
from clipsae.errors import ClipsaeError
from clipsae.pipeline.hooks import HookedForward, resolve_hooks, tower_for
from clipsae.train.model import SparseAutoencoder

POOLED = ("ln_post", "embed", "attnpool", "pooled")


def _block(visual: nn.Module, hook: str):
    block = tower_for(visual).block(hook)
    if block is None:
        raise ClipsaeError(f"the model cannot be re-run from hook {hook}; splice and intervene read resid.L, layerN, "
                           f"stage.N, ln_post, embed, attnpool and pooled codes")
    return block


def model_positions(visual: nn.Module, store, codes) -> np.ndarray:
    """The model's token indices of the codes' tokens; refuses, in one line, a hook the model cannot be
    re-run from. A store of patches only numbers them from 0, where the model's prefix tokens (CLS,
    registers) come first."""
    positions = codes.token_positions
    if codes.hook in POOLED:
        return positions
    _block(visual, codes.hook)
    lay = store.layout(codes.hook)
    if lay.grid is not None and lay.prefix == 0:
        return positions + tower_for(visual).prefix
    return positions


@contextmanager
def replaced(visual: nn.Module, hook: str, positions: np.ndarray, fn):
    """Within the block, ``fn(x_NPD)`` replaces the activations of tokens ``positions`` at ``hook``."""
    pos = torch.as_tensor(positions)
    block = _block(visual, hook)

    def swap(module, inputs, out):
        if block.layout == "NCHW":  # a feature map: positions row-major over H·W
            n, c, h, w = out.shape
            tokens = out.flatten(2).transpose(1, 2).clone()
            tokens[:, pos] = fn(tokens[:, pos])
            return tokens.transpose(1, 2).reshape(n, c, h, w)
        x = out if block.layout == "NLD" else out.transpose(0, 1)
        x = x.clone()
        x[:, pos] = fn(x[:, pos])
        return x if block.layout == "NLD" else x.transpose(0, 1)

    handle = block.module.register_forward_hook(swap)
    try:
        yield
    finally:
        handle.remove()


def reconstruct(sae: SparseAutoencoder, x_NPD: torch.Tensor) -> torch.Tensor:
    """SAE(x) row by row through the sparse codes (no dense (rows, latents) matrix)."""
    flat = x_NPD.reshape(-1, x_NPD.shape[-1])
    return sae.reconstruct_sparse(flat, sae.encode_sparse(flat)).to(x_NPD.dtype).reshape(x_NPD.shape)


@torch.no_grad()
def reference_embeddings(visual: nn.Module, hook: str, positions: np.ndarray, mean_PD: torch.Tensor,
                         images_NCHW: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(original, mean-ablated, zero-ablated) image embeddings of a batch: what does not depend on the SAE."""
    original = visual(images_NCHW)
    with replaced(visual, hook, positions, lambda x: mean_PD.to(x.dtype).expand_as(x)):
        ablated = visual(images_NCHW)
    with replaced(visual, hook, positions, torch.zeros_like):
        zeroed = visual(images_NCHW)
    return original, ablated, zeroed


@torch.no_grad()
def spliced_embeddings(visual: nn.Module, hook: str, positions: np.ndarray, sae: SparseAutoencoder,
                       mean_PD: torch.Tensor, images_NCHW: torch.Tensor,
                       reference: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """(original, spliced, mean-ablated, zero-ablated) image embeddings of a batch; ``reference``, where given, is
    :func:`reference_embeddings` of the same batch, computed before."""
    if hook in POOLED:
        pooled = HookedForward(visual, resolve_hooks(visual, [hook], "all"), "all")(images_NCHW)[hook][:, 0]
        spliced, ablated = reconstruct(sae, pooled[:, None])[:, 0], mean_PD[0].expand_as(pooled)
        return tuple(points_to_joint(x, visual, hook) for x in (pooled, spliced, ablated, torch.zeros_like(pooled)))
    original, ablated, zeroed = reference or reference_embeddings(visual, hook, positions, mean_PD, images_NCHW)
    with replaced(visual, hook, positions, lambda x: reconstruct(sae, x)):
        spliced = visual(images_NCHW)
    return original, spliced, ablated, zeroed


# The SAE-free embeddings of the last splice, by what decides them (store, hook, tokens, images, model, device):
# splicing several SAEs of one hook in a process (the demo, a comparison) runs the three reference forwards
# once, then one forward per SAE (load_clip keeps the model itself).
_REFERENCE: dict[tuple, list] = {}


def check_images(n: int) -> None:
    if n < 1:
        raise ClipsaeError(f"--images must be at least 1, not {n}")


def _pick(n_images: int, n: int) -> np.ndarray:
    """``n`` images spread evenly over the store (all when it holds fewer)."""
    return np.unique(np.linspace(0, n_images - 1, min(n, n_images)).round().astype(np.int64))


def run_splice(t, images: int = 512, sae: Path | None = None, model: str | None = None,
               pretrained: str | None = None, shards: Path | None = None, classes: Path | None = None,
               device: str = "auto", batch: int = 32, progress: bool = True) -> list[str]:
    """splice.json: embeddings cosines with and without the SAE, and zero-shot accuracy where labels allow."""
    from clipsae.analysis.codes_sae import codes_sae
    from clipsae.analysis.random_weights import WARNING as RANDOM_WEIGHTS_WARNING
    from clipsae.analysis.random_weights import model_has_random_weights
    from clipsae.pipeline.model import clip_key, load_clip, store_model_config

    check_images(images)
    hook = t.codes.hook
    dev = resolve_device(device)
    model_sae = codes_sae(t.codes, sae, device=str(dev))
    cfg = store_model_config(t.store.config, t.store.provenance, pretrained, model)
    chosen = _pick(t.store.n_images, images)
    key = (str(t.store.path.resolve()), hook, tuple(t.codes.token_positions.tolist()), tuple(chosen.tolist()),
           clip_key(cfg), str(dev), str(shards), batch)
    if key not in _REFERENCE:
        _REFERENCE.clear()  # one splice's references held at a time
        _REFERENCE[key] = []
    references = _REFERENCE[key]
    clip = load_clip(cfg)
    clip.model.to(dev)
    visual = clip.vision.visual
    positions = model_positions(visual, t.store, t.codes)
    sums = t.codes.sums()
    mean_PD = torch.from_numpy(sums.position_x_sum / sums.n_images).float().to(dev)
    labels = t.store.labels()[chosen]
    names = class_names(t.store, classes, shards)
    cos_s, cos_m = [], []
    emb: dict[str, list] = {"clean": [], "sae": [], "mean": [], "zero": []}
    bar = tqdm(total=len(chosen), desc="splice", unit="img", disable=not progress)
    first = not references
    for b, (_, x) in enumerate(iter_image_batches(t.store, chosen, clip.vision.preprocess, batch, shards)):
        if hook not in POOLED and first:
            references.append(reference_embeddings(visual, hook, positions, mean_PD, x.to(dev)))
        reference = references[b] if hook not in POOLED else None
        o, s, m, z = spliced_embeddings(visual, hook, positions, model_sae, mean_PD, x.to(dev), reference)
        cos_s.append(torch.nn.functional.cosine_similarity(o, s, dim=1).cpu())
        cos_m.append(torch.nn.functional.cosine_similarity(o, m, dim=1).cpu())
        for name, e in zip(emb, (o, s, m, z)):
            emb[name].append(e.float().cpu())
        bar.update(len(x))
    bar.close()
    emb_NE = {name: torch.cat(e) for name, e in emb.items()}
    cs, cm = torch.cat(cos_s).double().numpy(), torch.cat(cos_m).double().numpy()
    recovered = (cs.mean() - cm.mean()) / (1 - cm.mean()) if cm.mean() < 1 else float("nan")
    result = {"codes": t.codes.name, "hook": hook, "model": cfg.name, "weights": clip.vision.identity["pretrained"],
              "images": len(chosen), "tokens_replaced": len(t.codes.token_positions),
              "cosine_spliced": {"mean": cs.mean(), "median": float(np.median(cs)), "p10": float(np.quantile(cs, 0.1)),
                                 "min": cs.min()},
              "cosine_mean_ablated": {"mean": cm.mean(), "median": float(np.median(cm))},
              "recovered": recovered, "zero_shot": None}
    result = _floats(result)
    worse = ", worse than replacing the tokens by their mean" if recovered < 0 else ""
    summary = (f"cos(original, spliced) {cs.mean():.4f} mean over {len(chosen)} images (mean-ablated {cm.mean():.4f}; "
               f"recovered {recovered:.3f}{worse})")
    known = np.array([lab in names for lab in labels.tolist()], dtype=bool)
    lines = [f"{t.title}: spliced the SAE's reconstruction into {cfg.name} ({clip.vision.identity['pretrained']}) at "
             f"{hook} on {len(t.codes.token_positions)} token(s) per image", summary]
    if known.any() and len(names) > 1 and clip.has_text:
        zs = _zero_shot(clip, names, {k: e[known] for k, e in emb_NE.items()}, labels[known], dev)
        result["zero_shot"] = zs
        summary += (f"; zero-shot accuracy {zs['accuracy_original']:.3f} → {zs['accuracy_spliced']:.3f} spliced "
                    f"({zs['classes']} classes); CE recovered {zs['ce_recovered']:.3f}")
        lines.append(f"zero-shot over {zs['images']} labelled images, {zs['classes']} classes: accuracy "
                     f"{zs['accuracy_original']:.4f} original, {zs['accuracy_spliced']:.4f} spliced; predictions "
                     f"agree on {zs['agreement']:.1%}")
        lines.append(f"zero-shot cross-entropy of the true class: {zs['ce_clean']:.4f} original, {zs['ce_sae']:.4f} "
                     f"spliced, {zs['ce_mean']:.4f} mean-ablated, {zs['ce_zero']:.4f} zero-ablated; CE recovered "
                     f"{zs['ce_recovered']:.4f} (against zeros), {zs['ce_recovered_mean']:.4f} (against the mean); "
                     f"KL(original ‖ spliced) {zs['kl']:.4g}")
    elif not clip.has_text:
        lines.append(f"no zero-shot accuracy: {cfg.name} has no text tower")
    else:
        lines.append("no zero-shot accuracy: the images have no labels with class names (see --classes)")
    if model_has_random_weights(clip):
        result["random_weights"] = True
        summary = f"random weights: {summary}"
        lines.append(f"warning: {RANDOM_WEIGHTS_WARNING}")
    result["summary"] = summary
    path = write_json(t.out / SPLICE_FILE, result)
    return lines + [f"wrote {path}"]


def _zero_shot(clip, names: dict[int, str], emb: dict[str, torch.Tensor], labels: np.ndarray, dev) -> dict:
    """Accuracy, agreement and the downstream losses of the module's formulas, from the four embeddings."""
    order = sorted(names)
    text = text_embeddings(clip.model, clip.tokenizer, [names[c] for c in order], device=str(dev))
    scale = float(clip.model.logit_scale.detach().exp())
    logp = {k: torch.log_softmax(scale * torch.nn.functional.normalize(e.double(), dim=1) @ text.double().T, dim=1)
            for k, e in emb.items()}
    col = torch.as_tensor([order.index(int(lab)) for lab in labels.tolist()])
    ce = {k: float(-lp[torch.arange(len(col)), col].mean()) for k, lp in logp.items()}
    pred = {k: np.array(order)[lp.argmax(1).numpy()] for k, lp in logp.items()}
    kl = float((logp["clean"].exp() * (logp["clean"] - logp["sae"])).sum(1).mean())
    return {"prompt": PROMPT, "classes": len(order), "images": len(labels),
            "accuracy_original": float((pred["clean"] == labels).mean()),
            "accuracy_spliced": float((pred["sae"] == labels).mean()),
            "agreement": float((pred["clean"] == pred["sae"]).mean()),
            **{f"ce_{k}": v for k, v in ce.items()},
            "ce_recovered": _recovered(ce["zero"], ce["sae"], ce["clean"]),
            "ce_recovered_mean": _recovered(ce["mean"], ce["sae"], ce["clean"]), "kl": kl}


def _recovered(floor: float, sae: float, clean: float) -> float:
    """(floor − sae) / (floor − clean): 1 where the SAE loses nothing, 0 where it does no better than the floor."""
    return (floor - sae) / (floor - clean) if floor != clean else float("nan")


def _floats(obj):
    """numpy scalars → Python floats, for JSON."""
    if isinstance(obj, dict):
        return {k: _floats(v) for k, v in obj.items()}
    return float(obj) if isinstance(obj, np.floating) else obj
