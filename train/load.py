"""Loading an SAE from disk, whoever trained it: the format is detected from the files' contents
(``train/formats/``, one module per tool), or named with ``sae_format``."""

import hashlib
import json
from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.train import formats
from clipsae.train.formats.saelens import CFG_FILE
from clipsae.train.formats.saelens import WEIGHTS as SAELENS_WEIGHTS
from clipsae.train.model import SparseAutoencoder

__all__ = ["CFG_FILE", "SAELENS_WEIGHTS", "METRICS_FILE", "load_sae", "load_metrics"]
METRICS_FILE = "metrics.json"
SNAPSHOTS = "snapshots"  # a run's folder of snapshot exports, one per <tokens trained> (train --snapshot-every)


HUB = "hf-hub:"


def from_hub(spec: str) -> Path:
    """The local copy of ``hf-hub:ORG/REPO[/PATH]`` (PATH a file or a folder in the repository), as
    open_clip names hub weights: downloaded into the Hugging Face cache, or found there offline
    (``HF_HUB_OFFLINE=1``). A failed download is one line saying why, never a silent fallback."""
    parts = [x for x in spec[len(HUB):].split("/") if x]
    if len(parts) < 2:
        raise ClipsaeError(f"{spec!r} must be hf-hub:ORG/REPO or hf-hub:ORG/REPO/PATH")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download

    try:
        root = snapshot_download(repo, allow_patterns=[sub, f"{sub}/*"] if sub else None)
    except Exception as exc:  # network, authorisation and missing-repository errors are each their own type
        raise ClipsaeError(f"cannot get {spec} from the Hugging Face hub ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:240]})") from None
    local = Path(root) / sub
    if not local.exists():
        raise ClipsaeError(f"{spec}: the repository {repo} has no {sub}")
    return local


def load_sae(path: str | Path, device: str = "cpu", sae_format: str | None = None,
             sae_options: dict | str | None = None) -> SparseAutoencoder:
    """Load the SAE at ``path`` (a folder, a file for formats that are one, or ``hf-hub:ORG/REPO[/PATH]``)
    onto ``device``, ready for inference: no gradients. ``sae_format`` names the format instead of detecting it;
    ``sae_options`` (a dict, or ``KEY=VALUE,…``) gives what the format's files do not record."""
    p = from_hub(str(path)) if str(path).startswith(HUB) else Path(path)
    if not p.exists():
        raise ClipsaeError(f"{p} does not exist: pass an SAE directory or file")
    given = formats.parse_options(sae_options) if isinstance(sae_options, str) or sae_options is None else sae_options
    fmt = formats.get(sae_format) if sae_format is not None else formats.detect(p)
    options = fmt.typed_options(given)
    model, weights = fmt.load(p, str(device), **options)
    with open(weights, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    model.identity = {"path": str(p.resolve()), "format": _identity_format(fmt.name, model), "weights_sha256": digest,
                      "architecture": model.architecture, "d_in": model.d_in, "d_sae": model.d_sae}
    if options:  # what a reader needs again to read the same SAE (codes_sae)
        model.identity["options"] = options
    # An SAE loaded for inference: no autograd graph behind encode/decode (fine-tuning code may
    # call requires_grad_(True) itself).
    return model.to(device).requires_grad_(False)


def _identity_format(name: str, model: SparseAutoencoder) -> str:
    # A clipsae run is a SAELens folder with a "clipsae" section in its cfg.json.
    return "clipsae" if name == "saelens" and "clipsae" in model.cfg else name


def reader_format(identity_format: str | None) -> str | None:
    """The ``sae_format`` that reads an SAE again from the format its identity records."""
    return "saelens" if identity_format == "clipsae" else identity_format


def load_metrics(path: str | Path) -> dict | None:
    """The held-out metrics ``clipsae train`` saved next to an SAE, if any."""
    f = Path(path) / METRICS_FILE
    return json.loads(f.read_text()) if f.is_file() else None

