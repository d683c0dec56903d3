"""saev (OSU-NLP-Group) checkpoints: ``sae.pt`` is one JSON header line, then ``torch.save`` bytes of the
state dict: ``W_enc`` (d_model, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_model), ``b_dec``, and for
BatchTopK ``activation.threshold``.

The formula depends on when the file was written, and saev's own ``load()`` does not tell:
- **schema 3, 4, 5** (October 2025 on; the current code): h = x·W_enc + b_enc, with no b_dec subtracted;
  ``Relu``: f = ReLU(h); ``TopK``: the k largest h kept as they are (negative ones too); ``BatchTopK`` at
  inference: h where h > θ (its stored threshold; ReLU while θ ≤ 0). x̂ = f·W_dec + b_dec.
- **no schema** (the first releases, 2024 to mid-2025, all before saev dropped b_dec from its encoder
  on 2025-07-31): f = ReLU((x − b_dec)·W_enc + b_enc), x̂ = f·W_dec + b_dec.
- **schema 1** files were written both before and after that change; the header's ``commit`` (the short
  SHA of the saev checkout that wrote it) says which, through ``saev_schema1_commits.json``: every saev
  commit that dumps schema 1, classified by reading its modeling.py. Commits up to 2025-07-31 15:25
  subtract b_dec (``Relu``: f = ReLU((x − b_dec)·W_enc + b_enc); ``TopK``: the k largest of that z, kept
  signed); the five after it do not; in the seven that follow, ``SparseAutoencoder`` did not and
  ``MatryoshkaSparseAutoencoder`` did, which the header does not say, so those are refused, as are an
  unknown commit and a ``BatchTopK`` of that time (chosen across the batch: no per-image code).
- **schema 2** is refused: Matryoshka SAEs still subtracted b_dec until 2025-09-05, and nothing in the
  header says which class wrote a file.
saev's early releases also trained on activations standardised with statistics that are not in the file.
"""

import functools
import io
import json
from pathlib import Path

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, need_tensors
from clipsae.train.model import SparseAutoencoder

CURRENT = (3, 4, 5)
SCHEMA1_COMMITS = Path(__file__).with_name("saev_schema1_commits.json")
_HEADER_LIMIT = 1 << 20  # a header line is a few hundred bytes; never read a weights file as one


def read_header(p: Path, body: bool = False) -> tuple[dict, bytes] | None:
    """(the JSON header, the bytes after it when ``body``), or None when the file does not start with a
    JSON object line."""
    try:
        with open(p, "rb") as fh:
            line = fh.readline(_HEADER_LIMIT)
            if not line.startswith(b"{") or not line.endswith(b"\n"):
                return None
            header = json.loads(line)
            return (header, fh.read() if body else b"") if isinstance(header, dict) else None
    except (OSError, ValueError):
        return None


def _weights(p: Path, body: bytes, device: str) -> dict:
    try:
        w = torch.load(io.BytesIO(body), map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for bytes that are not a state dict
        raise ClipsaeError(f"cannot read the weights after {p}'s header: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(w, dict):
        raise ClipsaeError(f"{p}: the bytes after the header are not a state dict")
    need_tensors(w, ("W_enc", "b_enc", "W_dec", "b_dec"), p)
    return w


def _current(p: Path, header: dict, w: dict) -> SparseAutoencoder:
    cfg = header.get("cfg") or {}
    act = cfg.get("activation") or {}
    kind, params = act.get("cls"), act.get("params") or {}
    ours = {"format": "saev", "schema": header["schema"], **{k: v for k, v in cfg.items() if k != "activation"},
            "activation": kind, **params}
    args = (w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"])
    if kind == "Relu":
        return SparseAutoencoder("standard", *args, cfg=ours, apply_b_dec_to_input=False)
    if kind == "TopK":
        return SparseAutoencoder("topk_signed", *args, k=int(params.get("top_k", 0)), cfg=ours, apply_b_dec_to_input=False)
    if kind == "BatchTopK":
        need_tensors(w, ("activation.threshold",), p)
        theta = float(w["activation.threshold"])
        if theta <= 0:
            return SparseAutoencoder("standard", *args, cfg=ours, apply_b_dec_to_input=False)
        return SparseAutoencoder("jumprelu", *args, threshold=theta, cfg=ours, apply_b_dec_to_input=False)
    raise ClipsaeError(f"{p}: saev activation {kind!r} is not one clipsae reads (Relu, TopK, BatchTopK)")


@functools.cache
def _schema1_commits() -> dict[str, str]:
    table = json.loads(SCHEMA1_COMMITS.read_text())
    return {sha: formula for formula in ("subtracts_b_dec", "keeps_x", "depends_on_objective") for sha in table[formula]}


def schema1_formula(commit) -> str | None:
    """How the saev commit that wrote a schema-1 file encoded (``subtracts_b_dec``, ``keeps_x`` or
    ``depends_on_objective``); None for a commit saev's history does not hold."""
    if not isinstance(commit, str) or len(commit) < 7:
        return None
    found = {f for sha, f in _schema1_commits().items() if sha.startswith(commit.lower())}
    return found.pop() if len(found) == 1 else None


def _schema1(p: Path, header: dict, w: dict) -> SparseAutoencoder:
    commit = header.get("commit")
    formula = schema1_formula(commit)
    if formula is None:
        raise ClipsaeError(f"{p} is a saev schema-1 file written at commit {commit!r}, which is not a saev commit that "
                           f"wrote schema 1; saev's encoder formula changed within that schema, so clipsae needs the commit")
    if formula == "depends_on_objective":
        raise ClipsaeError(f"{p} was written by saev at commit {commit}, when its SparseAutoencoder encoded x and its "
                           f"MatryoshkaSparseAutoencoder x − b_dec, and the header does not say which trained it")
    cfg = header.get("cfg") or {}
    kind, params = header.get("cls"), cfg
    if kind not in ("Relu", "TopK", "BatchTopK"):  # the later schema-1 header: the activation inside cfg
        act = cfg.get("activation") or {"cls": "Relu", "params": {}}
        kind, params = act.get("cls"), act.get("params") or {}
    ours = {"format": "saev", "schema": 1, "commit": commit, "formula": formula,
            **{k: v for k, v in cfg.items() if k != "activation"}, "activation": kind}
    args = (w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"])
    subtract = formula == "subtracts_b_dec"
    if kind == "Relu":
        return SparseAutoencoder("standard", *args, cfg=ours, apply_b_dec_to_input=subtract)
    if kind == "TopK":
        return SparseAutoencoder("topk_signed", *args, k=int(params.get("top_k", 0)), cfg=ours, apply_b_dec_to_input=subtract)
    raise ClipsaeError(f"{p}: saev schema-1 activation {kind!r} is not one clipsae reads (Relu, TopK; the BatchTopK of "
                       f"that time kept the k·batch largest values of a batch, which is no code of one image)")


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    found = read_header(p, body=True)
    if found is None:
        raise ClipsaeError(f"{p} is not a saev checkpoint: it does not start with a JSON header line")
    header, body = found
    schema = header.get("schema")
    if schema is None:
        if "d_vit" not in header:
            raise ClipsaeError(f"{p}: a saev header without a schema must name d_vit (the first releases' format)")
        w = _weights(p, body, device)
        ours = {"format": "saev", "schema": None, **header}
        model = SparseAutoencoder("standard", w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"], cfg=ours)
        return model, p
    if schema == 1:
        return _schema1(p, header, _weights(p, body, device)), p
    if schema == 2:
        raise ClipsaeError(f"{p} is a saev schema-2 file: saev's Matryoshka SAEs still subtracted b_dec before "
                           f"encoding until 2025-09-05 and its other SAEs did not, and the header does not say which "
                           f"wrote it; re-save it with saev from October 2025 on (schema 3 or later)")
    if schema not in CURRENT:
        raise ClipsaeError(f"{p} is a saev schema-{schema} file; clipsae reads schemas {', '.join(map(str, CURRENT))}")
    return _current(p, header, _weights(p, body, device)), p


def _detect(p: Path) -> bool:
    found = p.is_file() and read_header(p)
    return bool(found) and ("schema" in found[0] or "d_vit" in found[0])


FORMAT = SAEFormat(
    name="saev",
    needs="a saev sae.pt (a JSON header line, then the state dict)",
    detect=_detect,
    load=load,
)
