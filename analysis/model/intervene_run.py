"""``clipsae analyze intervene``: choose the images, run them with and without the change, write what moved.

Zero-shot probabilities: p(c | image) = softmax_c(s · cos(e, t_c)), s the model's logit scale and
t_c the text embedding of "a photo of a {class}." (the class names ``splice`` uses), or of the two
``--contrast`` texts. With attributes (``--group-by``), the contrast's shift is reported per value
of that attribute: MSAE's bias analysis, after ``probe`` named the features tied to it.
"""

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clipsae.analysis.edits import codes_are_signed, parse_edits
from clipsae.analysis.model import intervene as iv
from clipsae.analysis.model.joint_space import PROMPT, text_embeddings
from clipsae.analysis.output import remove_stale, write_csv, write_json
from clipsae.errors import ClipsaeError
from clipsae.pipeline.towers import tower_for

INTERVENE_COLUMNS = ("image", "key", "label", "cosine", "pred_before", "pred_after", "pred_before_name", "pred_after_name",
                     "p_label_before", "p_label_after")
KEEP_TOP_COLUMNS = ("k", "images", "accuracy", "agreement", "mean_cosine")
SHIFTS_SHOWN = 10


@dataclass(frozen=True)
class Selection:
    """Which images: ``keys``, else the ``top_of`` feature's best ``n``, else the first ``n``."""

    keys: tuple[str, ...] = ()
    top_of: int | None = None
    n: int = 64

    def images(self, t, by: str) -> np.ndarray:
        if self.n < 1:
            raise ClipsaeError(f"--first must be at least 1, not {self.n}")
        if self.keys:
            return t.store.images_of(self.keys)
        if self.top_of is not None:
            from clipsae.analysis.features.top_images import top_images

            if not 0 <= self.top_of < t.codes.d_sae:
                raise ClipsaeError(f"--top-of {self.top_of} is out of range: these codes have {t.codes.d_sae} features")
            imgs = top_images(t.codes, self.n, by).images_FK[self.top_of]
            if not (imgs >= 0).any():
                raise ClipsaeError(f"feature {self.top_of} never fires on this store; --top-of needs a live feature")
            return imgs[imgs >= 0]
        return np.arange(min(self.n, t.store.n_images))


def zero_shot_probabilities(emb: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax_c(s · cos(e, t_c)) per image embedding e, over unit text embeddings t_c."""
    return torch.softmax(scale * torch.nn.functional.normalize(emb.float(), dim=1) @ text.T, dim=1)


def edits_from_probe(analysis: Path, spec: str, n_features: int) -> str:
    """``ATTR[:N]`` → an edit ablating the N (default 5) features probe_top.csv ranks first for ATTR."""
    import csv

    attr, _, n = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "5")
    path = analysis / "probe_top.csv"
    if not path.is_file():
        raise ClipsaeError(f"--ablate-probe needs {path}: run `clipsae analyze probe` on these codes first")
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["attribute"] == attr and r["direction"] == "positive"]
    if not rows:
        raise ClipsaeError(f"{path} has no attribute {attr!r}")
    feats = [int(r["feature"]) for r in sorted(rows, key=lambda r: int(r["rank"]))[:int(n)]]
    return ",".join(f"{f}:0" for f in feats if f < n_features)


def run_intervene(t, edit: str | None, where: str, keep_top: tuple[int, ...], selection: Selection, by: str,
                  choice, shards: Path | None, classes: Path | None, batch: int = 32, contrast: str | None = None,
                  group: tuple[str, np.ndarray] | None = None, progress: bool = True) -> list[str]:
    """intervene.csv, intervene_summary.json and intervene.png (or intervene_keep_top.csv for ``keep_top``)."""
    from clipsae.analysis.class_names import class_names
    from clipsae.analysis.codes_sae import codes_sae
    from clipsae.analysis.images import iter_image_batches
    from clipsae.analysis.model.query import store_clip
    from clipsae.analysis.random_weights import WARNING, model_has_random_weights

    if where not in iv.WHERE:
        raise ClipsaeError(f"--where must be one of {', '.join(iv.WHERE)}, not {where!r}")
    if bool(edit) == bool(keep_top):
        raise ClipsaeError("give --edit (or --ablate-probe) or --keep-top, one of them")
    if any(k < 1 for k in keep_top):
        raise ClipsaeError(f"--keep-top values must be at least 1, not {min(keep_top)}")
    edits = tuple(parse_edits(edit, t.codes.d_sae, signed=codes_are_signed(t.codes))) if edit else ()
    images = selection.images(t, by)
    dev = choice.device
    sae = codes_sae(t.codes, choice.sae, device=dev)
    clip = store_clip(t.codes, choice)
    visual = clip.vision.visual
    hook = t.codes.hook
    positions = iv.edited_positions(visual, t.store, t.codes, where)
    names = class_names(t.store, classes, shards)
    texts = ([c.strip() for c in contrast.split("|")] if contrast else [])
    if contrast and (len(texts) != 2 or not all(texts)):
        raise ClipsaeError(f"--contrast must be two texts separated by |, not {contrast!r}")
    order = sorted(names)
    class_text = text_embeddings(clip.model, clip.tokenizer, [names[c] for c in order], device=dev) if names else None
    pair_text = text_embeddings(clip.model, clip.tokenizer, texts, prompt="{}", device=dev) if texts else None
    scale = float(clip.model.logit_scale.detach().exp()) if clip.has_text else 1.0
    prefix = tower_for(visual).prefix
    changes = [iv.Change(edits, where, prefix=prefix)] if edits else [iv.Change((), "all", k, prefix) for k in keep_top]
    emb_o, emb_e = [], [[] for _ in changes]
    done = []
    bar = tqdm(total=len(images), desc="intervene", unit="img", disable=not progress)
    for idx, x in iter_image_batches(t.store, images, clip.vision.preprocess, batch, shards):
        x = x.to(dev)
        for j, change in enumerate(changes):
            o, e = iv.image_embeddings(visual, hook, positions, sae, change, x)
            emb_e[j].append(e.float().cpu())
        emb_o.append(o.float().cpu())
        done.append(idx)
        bar.update(len(idx))
    bar.close()
    idx = np.concatenate(done)
    orig = torch.cat(emb_o)
    edited = [torch.cat(e) for e in emb_e]
    labels = t.store.labels()[idx]
    lines = [f"{t.title}: {len(idx)} images run with "
             + (f"edits {', '.join(e.text() for e in edits)} on {where} tokens" if edits else
                f"each token keeping only its K largest features, K = {', '.join(map(str, keep_top))}")]
    if model_has_random_weights(clip):
        lines.append(f"warning: {WARNING}")
    if not edits:
        return lines + _keep_top(t, keep_top, orig, edited, labels, order, class_text, scale)
    caveat = WARNING if model_has_random_weights(clip) else None
    return lines + _edited(t, idx, labels, orig, edited[0], order, names, class_text, pair_text, texts, scale,
                           edits, where, group, caveat)


def _keep_top(t, keep_top, orig, edited, labels, order, class_text, scale) -> list[str]:
    if class_text is None:
        raise ClipsaeError("--keep-top reports zero-shot accuracy: the images need labels with class names (--classes)")
    pred_o = np.array(order)[zero_shot_probabilities(orig, class_text, scale).argmax(1).numpy()]
    rows, lines = [], []
    for k, e in zip(keep_top, edited):
        pred = np.array(order)[zero_shot_probabilities(e, class_text, scale).argmax(1).numpy()]
        cos = torch.nn.functional.cosine_similarity(orig, e, dim=1).double().numpy()
        rows.append((k, len(labels), float((pred == labels).mean()), float((pred == pred_o).mean()), float(cos.mean())))
        lines.append(f"K = {k}: zero-shot accuracy {rows[-1][2]:.4f} (original {float((pred_o == labels).mean()):.4f}), "
                     f"agreement {rows[-1][3]:.1%}, cosine {rows[-1][4]:.4f}")
    path = write_csv(t.out / "intervene_keep_top.csv", KEEP_TOP_COLUMNS, rows)
    return lines + [f"wrote {path}"]


def _edited(t, idx, labels, orig, edited, order, names, class_text, pair_text, texts, scale, edits, where, group,
            caveat: str | None):
    keys = t.store.keys()
    cos = torch.nn.functional.cosine_similarity(orig, edited, dim=1).double().numpy()
    summary = {"codes": t.codes.name, "hook": t.codes.hook, "edits": [e.text() for e in edits], "where": where,
               "images": len(idx), "cosine": {"mean": float(cos.mean()), "min": float(cos.min())}}
    lines = [f"cos(original, edited) {cos.mean():.4f} mean, {cos.min():.4f} lowest"]
    pred_o = pred_e = name_o = name_e = p_lab_o = p_lab_e = [None] * len(idx)
    written = []
    if class_text is not None:
        po, pe = zero_shot_probabilities(orig, class_text, scale).numpy(), zero_shot_probabilities(edited, class_text, scale).numpy()
        cls = np.array(order)
        pred_o, pred_e = cls[po.argmax(1)], cls[pe.argmax(1)]
        name_o, name_e = [names[c] for c in pred_o.tolist()], [names[c] for c in pred_e.tolist()]
        col = {c: i for i, c in enumerate(order)}
        has = np.array([lab in col for lab in labels.tolist()])
        at = np.array([col.get(lab, 0) for lab in labels.tolist()])
        p_lab_o = np.where(has, po[np.arange(len(idx)), at], np.nan)
        p_lab_e = np.where(has, pe[np.arange(len(idx)), at], np.nan)
        shift = (pe - po).mean(0)
        ranked = np.argsort(shift, kind="stable")
        summary["zero_shot"] = {
            "prompt": PROMPT, "classes": len(order),
            "accuracy_before": float((pred_o == labels)[has].mean()) if has.any() else None,
            "accuracy_after": float((pred_e == labels)[has].mean()) if has.any() else None,
            "agreement": float((pred_o == pred_e).mean()),
            "gained": [{"class": names[order[i]], "shift": float(shift[i])} for i in ranked[::-1][:SHIFTS_SHOWN]],
            "lost": [{"class": names[order[i]], "shift": float(shift[i])} for i in ranked[:SHIFTS_SHOWN]]}
        z = summary["zero_shot"]
        lines.append(f"zero-shot over {len(order)} classes: predictions agree on {z['agreement']:.1%}"
                     + (f"; accuracy {z['accuracy_before']:.4f} → {z['accuracy_after']:.4f}" if has.any() else ""))
        lines.append("gained most: " + ", ".join(f"{g['class']} ({g['shift']:+.4f})" for g in z["gained"][:3])
                     + "; lost most: " + ", ".join(f"{g['class']} ({g['shift']:+.4f})" for g in z["lost"][:3]))
        title = f"{t.title}\nedits {', '.join(summary['edits'])}" + (f"\n{caveat}" if caveat else "")
        written.append(_plot_shifts(z, t.out / "intervene.png", title))
    else:
        lines.append("no zero-shot probabilities: the images have no labels with class names (see --classes)")
        remove_stale(t.out / "intervene.png")
    if pair_text is not None:
        a_o = zero_shot_probabilities(orig, pair_text, scale)[:, 0].double().numpy()
        a_e = zero_shot_probabilities(edited, pair_text, scale)[:, 0].double().numpy()
        contrast = {"texts": texts, "p_first_before": float(a_o.mean()), "p_first_after": float(a_e.mean())}
        lines.append(f"contrast {texts[0]!r} vs {texts[1]!r}: P({texts[0]!r}) {a_o.mean():.4f} → {a_e.mean():.4f}")
        if group is not None:
            name, values_I, value_names = group
            g = values_I[idx]
            contrast["groups"] = []
            for value in np.unique(g[~np.isnan(g)]):
                m = g == value
                shown = value_names[int(value)] if value_names else float(value)
                contrast["groups"].append({"attribute": name, "value": shown, "images": int(m.sum()),
                                           "p_first_before": float(a_o[m].mean()), "p_first_after": float(a_e[m].mean())})
                lines.append(f"  {name} = {shown if value_names else f'{value:g}'} ({int(m.sum())} images): "
                             f"{a_o[m].mean():.4f} → {a_e[m].mean():.4f}")
            unknown = int(np.isnan(g).sum())
            if unknown:
                lines.append(f"  {name} unknown for {unknown} images (left out of the groups)")
        summary["contrast"] = contrast
    rows = ((int(i), keys[i], int(lab), float(c), po_, pe_, no, ne, plo, ple)
            for i, lab, c, po_, pe_, no, ne, plo, ple in zip(idx, labels, cos, pred_o, pred_e, name_o, name_e, p_lab_o, p_lab_e))
    path = write_csv(t.out / "intervene.csv", INTERVENE_COLUMNS, rows)
    js = write_json(t.out / "intervene_summary.json", summary)
    return lines + [f"wrote {', '.join([str(path), str(js), *map(str, written)])}"]


def _plot_shifts(z: dict, path: Path, title: str) -> Path:
    """Bars of the classes whose mean zero-shot probability rose and fell most."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    rows = z["lost"][::-1] + z["gained"]
    rows = [r for r in dict((r["class"], r) for r in rows).values()]
    rows.sort(key=lambda r: r["shift"])
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(rows) + 1.2))
    ax.barh([r["class"] for r in rows], [r["shift"] for r in rows],
            color=["tab:red" if r["shift"] < 0 else "tab:green" for r in rows])
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("mean change of zero-shot probability")
    ax.set_title("\n".join(textwrap.fill(line, 90) for line in title.split("\n")), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
