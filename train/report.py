"""What ``clipsae train`` and ``clipsae sae info`` print: plain text for people, dicts for ``--json``."""

from pathlib import Path

from clipsae.train.load import load_metrics, load_sae


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# Below this many held-out tokens a held-out FVU moves by more than the differences a sweep looks for.
MIN_HELDOUT_TOKENS = 10_000


def heldout_warning(m: dict) -> str:
    """A warning when held-out metrics rest on fewer than :data:`MIN_HELDOUT_TOKENS` tokens, else ''."""
    n = m.get("heldout_tokens")
    if n is None or n >= MIN_HELDOUT_TOKENS:
        return ""
    return (f"  (held-out metrics rest on {n:,} tokens, fewer than {MIN_HELDOUT_TOKENS:,}: noisy; "
            f"raise --holdout or train on a bigger store)")


def format_result(result) -> list[str]:
    """One line per trained SAE: its held-out metrics and where it went."""
    lines = []
    for label, path in result.dirs.items():
        m = result.metrics.get(label, {})
        if "fvu" in m:
            worse = "  (worse than predicting the mean: FVU > 1)" if m["fvu"] > 1 else ""
            lines.append(f"{label}: FVU {m['fvu']:.4f}  cosine {m['cosine']:.4f}  L0 {m['l0']:.1f}  "
                         f"dead {m['dead']}  dense {m['dense']}  → {path}{worse}{heldout_warning(m)}")
        else:
            lines.append(f"{label} → {path}")
    return lines


def _thresholds(t) -> float | dict:
    """A JumpReLU's threshold: one number when every latent shares it, else its range and median."""
    t = t.float()
    if bool((t == t[0]).all()):
        return float(t[0])
    return {"min": float(t.min()), "median": float(t.median()), "max": float(t.max())}


def sweep_info(path: str | Path) -> list[dict]:
    """``sae_info`` of each SAE a sweep's run folder holds, in name order (none: not a sweep folder)."""
    from clipsae.train.formats import sweep_members

    return [sae_info(member) for member in sweep_members(Path(path))]


def format_sweep_info(infos: list[dict]) -> str:
    """One line per SAE of a sweep: what it is and its held-out FVU and L0."""
    lines = []
    for i in infos:
        k = f" k {i['k']}" if i["k"] else ""
        h = i["heldout"]
        scores = f"  FVU {h['fvu']:.4f}  L0 {h['l0']:.1f}" if "fvu" in h and "l0" in h else ""
        lines.append(f"{i['path']}: {i['trained_as'] or i['architecture']}  d_sae {i['d_sae']}{k}{scores}")
    return "\n".join(lines)


def sae_info(path: str | Path, sae_format: str | None = None, sae_options: str | None = None) -> dict:
    """What the SAE at ``path`` is (whoever trained it) and, for a clipsae run, its held-out metrics."""
    model = load_sae(path, sae_format=sae_format, sae_options=sae_options)
    metrics = load_metrics(path) or {}
    cfg = model.cfg
    ours = cfg.get("clipsae", {})
    meta = cfg.get("meta", {}) if isinstance(cfg.get("meta"), dict) else {}
    return {
        "path": str(path), "format": model.identity.get("format"), "architecture": model.architecture,
        "d_in": model.d_in, "d_sae": model.d_sae, "k": model.k,
        "threshold": _thresholds(model.threshold) if model.architecture == "jumprelu" else None,
        "trained_as": ours.get("spec", {}).get("arch"), "model": meta.get("model_name"),
        "hook": model.recorded("hook") or model.recorded("hook_name"), "tokens": model.recorded("tokens"),
        "store": meta.get("dataset_path"),
        "input_norm": None if model.input_norm == "none" else model.input_norm, "soft_cap": model.soft_cap or None,
        "steps": ours.get("steps"), "tokens_trained": ours.get("tokens_trained"), "input_scale": ours.get("scale"),
        "weights_sha256": model.identity.get("weights_sha256"),
        "heldout": {k: v for k, v in metrics.items() if k not in ("density_hist", "sae", "split")},
    }


def format_sae_info(info: dict) -> str:
    lines = [f"{key:>15}: {_fmt(value)}" for key, value in info.items()
             if key not in ("heldout", "threshold") and value is not None]
    t = info.get("threshold")
    if isinstance(t, dict):
        lines.append(f"{'threshold':>15}: per latent, from {t['min']:.4g} to {t['max']:.4g}, median {t['median']:.4g}")
    elif t is not None:
        lines.append(f"{'threshold':>15}: {t:.4g} (every latent)")
    if "hook" in info and info["hook"] is None:
        lines.append(f"{'hook':>15}: not recorded by its files; encode takes the store's only hook of width "
                     f"{info['d_in']}, or --hook")
    if info["heldout"]:
        lines.append("held-out metrics:")
        lines += [f"{key:>22}: {_fmt(value)}" for key, value in info["heldout"].items()]
        if info["heldout"].get("fvu", 0) > 1:
            lines.append("FVU > 1: this SAE reconstructs worse than predicting the mean of its inputs")
        warning = heldout_warning(info["heldout"])
        if warning:
            lines.append(warning.strip(" ()"))
    else:
        lines.append("no held-out metrics (trained with --holdout 0, or not by clipsae)")
    return "\n".join(lines)
