"""saev checkpoints load and code as saev's own code did when the file was written; the headers that cannot
say which formula they used are refused in one line."""

import io
import json

import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.train import load_sae

D, N, K = 12, 48, 5


def saev_file(path, header, seed=0, threshold=None):
    """One JSON header line, then torch.save bytes of the state dict, as saev's dump writes them."""
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D, N, generator=g) / D**0.5, "b_enc": torch.randn(N, generator=g) * 0.1,
         "W_dec": torch.randn(N, D, generator=g) * 0.3, "b_dec": torch.randn(D, generator=g) * 0.2}
    if threshold is not None:
        w["activation.threshold"] = torch.tensor(threshold)
    buf = io.BytesIO()
    torch.save(w, buf)
    path.write_bytes(json.dumps(header).encode() + b"\n" + buf.getvalue())
    return path, w


def current_header(cls, schema=5, **params):
    return {"schema": schema, "cfg": {"d_model": D, "d_sae": N, "activation": {"cls": cls, "params": params},
                                       "normalize_w_dec": True}, "commit": "abc", "lib": "1.2.0"}


def reference_current(cls, w, x, k=K):
    """saev's current encode (h = x W_enc + b_enc) and decode."""
    h = x @ w["W_enc"] + w["b_enc"]
    if cls == "Relu":
        f = torch.relu(h)
    elif cls == "TopK":
        idx = h.topk(k, dim=-1).indices
        f = torch.zeros_like(h).scatter(-1, idx, 1.0) * h
    else:
        theta = w["activation.threshold"]
        f = torch.where(h > theta, h, torch.zeros_like(h)) if theta > 0 else torch.where(h > 0, h, torch.zeros_like(h))
    return f, f @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("cls, threshold, schema", [("Relu", None, 5), ("TopK", None, 5), ("TopK", None, 3),
                                                    ("BatchTopK", 0.2, 4), ("BatchTopK", 0.0, 5)])
def test_current_schemas_code_as_saev_does_now(tmp_path, cls, threshold, schema):
    params = {"top_k": K} if cls != "Relu" else {}
    path, w = saev_file(tmp_path / "sae.pt", current_header(cls, schema, **params), threshold=threshold)
    sae = load_sae(path)
    x = torch.randn(30, D, generator=torch.Generator().manual_seed(1))
    x[0] = -4 * w["W_enc"].sum(1) / w["W_enc"].sum(1).norm()  # pre-activations mostly negative
    f, recon = reference_current(cls, w, x)
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), recon, atol=1e-5, rtol=1e-5)
    assert sae.identity["format"] == "saev"


def test_the_first_releases_subtract_b_dec_and_use_a_relu(tmp_path):
    path, w = saev_file(tmp_path / "sae.pt", {"d_vit": D, "exp_factor": 4, "l1_coeff": 4e-4, "seed": 0})
    x = torch.randn(30, D, generator=torch.Generator().manual_seed(1))
    f = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    sae = load_sae(path)
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae(x), f @ w["W_dec"] + w["b_dec"])


# Commits of saev's history, one of each formula its schema-1 dump was written with (saev_schema1_commits.json).
BEFORE_THE_CHANGE = "29d30b7"  # 2025-07-23: every class encodes (x − b_dec)·W_enc + b_enc
AFTER_THE_CHANGE = "e7ca004"  # 2025-07-31 15:25: "don't remove decoder bias", SparseAutoencoder encodes x·W_enc + b_enc
WITH_MATRYOSHKA = "9f39cf8"  # 2025-07-31 17:34: SparseAutoencoder encodes x, MatryoshkaSparseAutoencoder x − b_dec


def schema1_header(commit, cls="Relu", **cfg):
    """saev's schema-1 dump: cls named the activation's config class, whose fields were the SAE's."""
    return {"schema": 1, "cfg": {"d_vit": D, "d_sae": N, "seed": 0, **cfg}, "cls": cls, "commit": commit, "lib": "0.1.0"}


@pytest.mark.parametrize("commit, subtracts", [(BEFORE_THE_CHANGE, True), (AFTER_THE_CHANGE, False)])
@pytest.mark.parametrize("cls", ["Relu", "TopK"])
def test_schema1_codes_with_the_formula_of_the_commit_that_wrote_it(tmp_path, commit, subtracts, cls):
    path, w = saev_file(tmp_path / "sae.pt", schema1_header(commit, cls, **({"top_k": K} if cls == "TopK" else {})))
    x = torch.randn(30, D, generator=torch.Generator().manual_seed(1))
    h = (x - w["b_dec"] if subtracts else x) @ w["W_enc"] + w["b_enc"]
    # saev's TopK of that time: a 0/1 mask of the k largest, times h (signed); its Relu: torch.nn.ReLU.
    f = torch.zeros_like(h).scatter(-1, h.topk(K, dim=-1).indices, 1.0) * h if cls == "TopK" else torch.relu(h)
    sae = load_sae(path)
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), f @ w["W_dec"] + w["b_dec"], atol=1e-5, rtol=1e-5)
    assert sae.cfg["formula"] == ("subtracts_b_dec" if subtracts else "keeps_x")


def test_the_later_schema1_header_names_its_activation_inside_cfg(tmp_path):
    header = {"schema": 1, "cls": "SparseAutoencoderConfig", "commit": BEFORE_THE_CHANGE,
              "cfg": {"d_vit": D, "d_sae": N, "activation": {"cls": "TopK", "params": {"top_k": 3}}}}
    path, w = saev_file(tmp_path / "sae.pt", header)
    sae = load_sae(path)
    assert (sae.architecture, sae.k, sae.apply_b_dec_to_input) == ("topk_signed", 3, True)


@pytest.mark.parametrize("header, message", [
    (schema1_header("unknown"), "commit 'unknown', which is not a saev commit that wrote schema 1"),
    (schema1_header("0000000"), "commit '0000000', which is not a saev commit"),
    (schema1_header(WITH_MATRYOSHKA), "MatryoshkaSparseAutoencoder x − b_dec, and the header does not say which"),
    (schema1_header(BEFORE_THE_CHANGE, "BatchTopK", top_k=K), "activation 'BatchTopK' is not one clipsae reads"),
    (current_header("TopK", 2, top_k=K), "saev schema-2 file"),
    (current_header("TopK", 6, top_k=K), "schema-6 file; clipsae reads schemas 3, 4, 5"),
    (current_header("Gated", 5), "saev activation 'Gated' is not one clipsae reads"),
])
def test_headers_that_cannot_say_their_formula_are_refused_in_one_line(tmp_path, header, message):
    path, _ = saev_file(tmp_path / "sae.pt", header)
    with pytest.raises(ClipsaeError, match=message):
        load_sae(path)


def test_a_header_followed_by_no_state_dict_names_what_is_wrong(tmp_path):
    path = tmp_path / "sae.pt"
    path.write_bytes(json.dumps(current_header("Relu")).encode() + b"\nnot torch bytes")
    with pytest.raises(ClipsaeError, match="cannot read the weights after"):
        load_sae(path)
