"""SAEs trained elsewhere load and encode as their own tools define; bad directories get one line."""

import json

import pytest
import torch
from safetensors.torch import save_file

from clipsae.errors import ClipsaeError
from clipsae.train import SparseAutoencoder, load_sae

D, N = 12, 40


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D, N, generator=g) / D**0.5, "b_enc": torch.randn(N, generator=g) * 0.1,
            "W_dec": torch.randn(N, D, generator=g) * 0.7, "b_dec": torch.randn(D, generator=g)}


def _x(seed=1):
    return torch.randn(64, D, generator=torch.Generator().manual_seed(seed))


def _saelens_dir(path, cfg, tensors):
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": N, "dtype": "float32", "device": "cpu",
                                               "normalize_activations": "none", **cfg}))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path


def _reference_saelens(cfg, w, x):
    """SAELens 6's encode, written out: x − b_dec·apply, @ W_enc + b_enc, then the activation."""
    z = (x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)) @ w["W_enc"] + w["b_enc"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        z = z * w["W_dec"].norm(dim=1)
    arch = cfg["architecture"]
    if arch == "standard":
        return torch.relu(z)
    if arch == "topk":
        top = z.topk(cfg["k"], dim=-1)
        return torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())
    thr = w["threshold"] if "threshold" in w else w["topk_threshold"]
    return torch.relu(z) * (z > thr)


@pytest.mark.parametrize("cfg, extra", [
    ({"architecture": "standard"}, {}),
    ({"architecture": "standard", "apply_b_dec_to_input": False}, {}),
    ({"architecture": "topk", "k": 5}, {}),
    ({"architecture": "topk", "k": 5, "apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": True}, {}),
    ({"architecture": "jumprelu"}, {"threshold": torch.linspace(0.0, 0.6, N)}),
    ({"architecture": "jumprelu", "apply_b_dec_to_input": False}, {"threshold": torch.full((N,), 0.3)}),
    ({"architecture": "batchtopk", "k": 5}, {"topk_threshold": torch.tensor(0.25)}),
])
def test_saelens_directory_encodes_as_saelens_does(tmp_path, cfg, extra):
    w = {**_weights(), **extra}
    sae = load_sae(_saelens_dir(tmp_path / "sae", cfg, w))
    x = _x()
    f = _reference_saelens(cfg, w, x)
    torch.testing.assert_close(sae.encode(x), f)
    recon = f / w["W_dec"].norm(dim=1) if cfg.get("rescale_acts_by_decoder_norm") else f
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon @ w["W_dec"] + w["b_dec"])
    assert sae.identity["format"] == "saelens" and len(sae.identity["weights_sha256"]) == 64


def test_sparsify_checkpoint_encodes_as_sparsify_does(tmp_path):
    w = _weights()
    path = tmp_path / "layers.6"
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 4, "normalize_decoder": True,
                                               "num_latents": N, "k": 6, "multi_topk": False, "skip_connection": False,
                                               "transcode": False, "d_in": D}))
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}, str(path / "sae.safetensors"))
    sae = load_sae(path)
    x = _x()
    # sparsify: top-k of ReLU(encoder(x − b_dec)); decode Σ top_acts·W_dec[top_indices] + b_dec.
    pre = torch.relu(torch.nn.functional.linear(x - w["b_dec"], w["W_enc"].T, w["b_enc"]))
    top = pre.topk(6, dim=-1)
    codes = sae.encode_sparse(x)
    dense = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    torch.testing.assert_close(codes.to_dense(N), dense)
    torch.testing.assert_close(sae.decode_sparse(codes), dense @ w["W_dec"] + w["b_dec"])
    assert sae.identity["format"] == "sparsify" and sae.architecture == "topk" and sae.k == 6


def test_sparsify_groupmax_takes_the_largest_of_each_group(tmp_path):
    w = _weights()
    path = tmp_path / "layers.3"
    path.mkdir()
    k = 4
    (path / "cfg.json").write_text(json.dumps({"activation": "groupmax", "num_latents": N, "k": k, "d_in": D,
                                               "skip_connection": False, "transcode": False}))
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}, str(path / "sae.safetensors"))
    sae = load_sae(path)
    x = _x()
    # sparsify's select_topk for groupmax: z.unflatten(-1, (k, -1)).max(-1), indices offset by each group's start.
    pre = torch.relu(torch.nn.functional.linear(x - w["b_dec"], w["W_enc"].T, w["b_enc"]))
    vals, idx = pre.unflatten(-1, (k, -1)).max(-1)
    idx = idx + torch.arange(0, N, N // k)
    dense = torch.zeros_like(pre).scatter(-1, idx, vals)
    torch.testing.assert_close(sae.encode(x), dense)
    torch.testing.assert_close(sae.decode_sparse(sae.encode_sparse(x)), dense @ w["W_dec"] + w["b_dec"])
    (path / "cfg.json").write_text(json.dumps({"activation": "groupmax", "num_latents": N, "k": 7, "d_in": D}))
    with pytest.raises(ClipsaeError, match="must split into k groups of equal size"):
        load_sae(path)


@pytest.mark.parametrize("arch, kw", [("standard", {}), ("topk", {"k": 7}), ("jumprelu", {"threshold": torch.full((N,), 0.2)})])
def test_sparse_encoding_equals_dense_encoding(arch, kw):
    w = _weights(3)
    sae = SparseAutoencoder(arch, w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"], **kw)
    x = _x(4)
    codes = sae.encode_sparse(x)
    assert torch.equal(codes.rows, codes.rows.sort().values) and bool((codes.vals > 0).all())
    dense = _reference_saelens({"architecture": arch, **kw}, {**w, **kw}, x)
    torch.testing.assert_close(codes.to_dense(N), dense)
    torch.testing.assert_close(codes.counts(), (dense > 0).sum(1))
    torch.testing.assert_close(sae.decode_sparse(codes), sae.decode(dense))


def test_directory_without_cfg_names_what_is_missing(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ClipsaeError, match=r"holds none of cfg.json and sae_weights.safetensors \(SAELens, clipsae\); "
                                           r"cfg.json and sae.safetensors \(sparsify\); ae.pt and config.json"):
        load_sae(tmp_path / "x")


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_saelens_normalisations_are_applied_as_saelens_does(tmp_path, norm):
    cfg = {"architecture": "topk", "k": 5, "normalize_activations": norm}
    w = _weights()
    sae = load_sae(_saelens_dir(tmp_path / "sae", cfg, w))
    x = 4 * _x() + 2
    # SAELens's run_time_activation_norm_fn_in and _out, written out.
    if norm == "constant_norm_rescale":
        c = D**0.5 / x.norm(dim=-1, keepdim=True)
        x_in, out = x * c, (lambda y: y / c)
    else:
        mu = x.mean(dim=-1, keepdim=True)
        std = (x - mu).std(dim=-1, keepdim=True)
        x_in, out = (x - mu) / (std + 1e-5), (lambda y: y * std + mu)
    f = _reference_saelens(cfg, w, x_in)
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), out(f @ w["W_dec"] + w["b_dec"]), atol=1e-5, rtol=1e-5)


def test_sweep_directory_points_to_its_saes(tmp_path):
    _saelens_dir(tmp_path / "topk-x8-k16", {"architecture": "topk", "k": 3}, _weights())
    _saelens_dir(tmp_path / "relu-x8-l1_5", {"architecture": "standard"}, _weights())
    with pytest.raises(ClipsaeError, match=r"it is a sweep run directory: `clipsae sae info .*` lists its 2 SAEs"):
        load_sae(tmp_path)


@pytest.mark.parametrize("cfg, tensors, message", [
    ({"architecture": "skip_transcoder"}, _weights(), "unsupported SAE architecture 'skip_transcoder'"),
    ({"architecture": "standard", "normalize_activations": "expected_average_only_in"}, _weights(),
     "normalize_activations 'expected_average_only_in' is not supported.*scaling factor"),
    ({"architecture": "jumprelu"}, _weights(), "holds no threshold"),
    ({"architecture": "topk"}, _weights(), "needs k between 1 and d_sae=40"),
    ({"architecture": "standard"}, {k: v for k, v in _weights().items() if k != "b_dec"}, "lacks the tensors b_dec"),
])
def test_unsupported_or_broken_saelens_directory_gets_one_line(tmp_path, cfg, tensors, message):
    path = _saelens_dir(tmp_path / "sae", cfg, tensors)
    if "normalize_activations" in cfg:
        (path / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": N, **cfg}))
    with pytest.raises(ClipsaeError, match=message):
        load_sae(path)


def test_unsupported_sparsify_option_gets_one_line(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / "cfg.json").write_text(json.dumps({"activation": "softmax", "k": 4, "d_in": D}))
    save_file({"x": torch.zeros(1)}, str(path / "sae.safetensors"))
    with pytest.raises(ClipsaeError, match="sparsify activation='softmax' is not supported; clipsae reads topk and groupmax"):
        load_sae(path)


def test_analysis_side_imports_no_training_code():
    import subprocess
    import sys

    code = ("import sys; from clipsae.train import load_sae, SparseAutoencoder, SparseCodes; load_sae; SparseAutoencoder; "
            "SparseCodes; print(sorted(m for m in sys.modules if m.startswith('clipsae.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["clipsae.train", "clipsae.train.codes", "clipsae.train.formats", "clipsae.train.formats.saelens",
                         "clipsae.train.load", "clipsae.train.model", "clipsae.train.topk"]


def test_a_loaded_sae_builds_no_autograd_graph(tmp_path):
    sae = load_sae(_saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 5}, _weights()))
    assert not any(p.requires_grad for p in sae.parameters())
    x_hat = sae.decode(sae.encode(_x()))
    assert x_hat.grad_fn is None and not x_hat.requires_grad


def _hub_cache(root, repo, sub, make):
    """A Hugging Face cache holding one snapshot of ``repo`` with an SAE at ``sub``, as a download leaves it."""
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abc")
    make(base / "snapshots" / "0123abc" / sub)
    return root


def _clipsae(*args, env):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "clipsae", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_an_sae_is_read_from_the_hub_by_its_hf_hub_name(tmp_path):
    def make(path):
        path.parent.mkdir(parents=True)
        _saelens_dir(path, {"architecture": "topk", "k": 3}, _weights())

    cache = _hub_cache(tmp_path / "cache", "someone/clip-saes", "layer_22", make)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    p = _clipsae("sae", "info", "hf-hub:someone/clip-saes/layer_22", env=env)
    assert p.returncode == 0, p.stderr
    assert "format: saelens" in p.stdout and "d_sae: 40" in p.stdout
    from tests.analysis.helpers import make_store

    store = make_store(tmp_path / "s.zarr", n_parts=1, per_part=4, d=D)
    p = _clipsae("encode", "--store", store, "--sae", "hf-hub:someone/clip-saes/layer_22", "--quiet", env=env)
    assert p.returncode == 0 and "as codes 'layer_22'" in p.stdout, p.stderr


def test_a_hub_sae_that_cannot_be_had_is_one_line(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    p = _clipsae("sae", "info", "hf-hub:someone/not-there", env=env)
    assert p.returncode == 1 and p.stderr.startswith("error: cannot get hf-hub:someone/not-there from the Hugging Face hub")
    assert len(p.stderr.strip().splitlines()) == 1
    p = _clipsae("sae", "info", "hf-hub:justone", env=env)
    assert p.returncode == 1 and "must be hf-hub:ORG/REPO" in p.stderr


def test_a_garbage_weights_file_is_called_damaged_not_named_by_the_librarys_words(tmp_path):
    path = _saelens_dir(tmp_path / "sae", {"architecture": "standard"}, _weights())
    (path / "sae_weights.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ClipsaeError, match=r"sae_weights.safetensors is damaged or is not a safetensors file: "
                                           r"its header does not parse$"):
        load_sae(path)
