"""The SAE that made a set of cached codes, found again and checked against what the codes recorded."""

from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes
from clipsae.train.load import load_sae, reader_format
from clipsae.train.model import SparseAutoencoder


def codes_sae(codes: Codes, sae: Path | None = None, device: str = "cpu") -> SparseAutoencoder:
    """``sae`` (or the folder encode recorded) loaded, if its weights hash to the codes' recorded sha256."""
    path = Path(sae) if sae is not None else Path(codes.identity.get("provenance", {}).get("sae_path", ""))
    if sae is None and not path.exists():
        raise ClipsaeError(f"codes {codes.name!r} were made by the SAE in {path}, which is not there now; pass --sae DIR")
    sae_id = codes.identity["sae"]
    model = load_sae(path, device=device, sae_format=reader_format(sae_id.get("format")), sae_options=sae_id.get("options"))
    want = codes.identity["sae"]["weights_sha256"]
    if model.identity["weights_sha256"] != want:
        raise ClipsaeError(f"the SAE in {path} is not the one that made codes {codes.name!r} (weights sha256 "
                           f"{model.identity['weights_sha256'][:12]}…, codes recorded {want[:12]}…)")
    if "input_norm" in codes.identity:  # the standardisation encode applied (analysis/input_norm.py)
        from clipsae.analysis import input_norm

        input_norm.apply(model, codes.identity["input_norm"])
    return model
