"""ViT-Prisma SAE folders load and code as its SparseAutoencoder does, input normalisation included."""

import contextlib
import dataclasses
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.store.writer import write_store
from clipsae.train import load_sae

D, N, K = 16, 64, 5


def prisma_folder(path, activation="relu", norm="none", seed=0, **cfg):
    """config.json and one weights .pt in ViT-Prisma's layout, random weights."""
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(D, N, generator=g) / D**0.5, "b_enc": torch.randn(N, generator=g) * 0.1,
         "W_dec": torch.randn(N, D, generator=g) * 0.4, "b_dec": torch.randn(D, generator=g) * 0.1}
    path.mkdir()
    torch.save(w, path / "n_images_2600058.pt")
    config = {"model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", "hook_point_layer": 3,
              "layer_subtype": "hook_resid_post", "d_in": D, "d_sae": N, "activation_fn_str": activation,
              "activation_fn_kwargs": {"k": K} if activation == "topk" else {}, "normalize_activations": norm,
              "cls_token_only": False, "architecture": "standard", **cfg}
    (path / "config.json").write_text(json.dumps(config))
    return path, w


def reference(activation, norm, w, x):
    """ViT-Prisma's encode_standard and forward written out: (feature_acts, sae_out)."""
    if norm == "constant_norm_rescale":
        c = D**0.5 / x.norm(dim=-1, keepdim=True)
        x_in, out = x * c, (lambda y: y / c)
    elif norm == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        std = (x - mu).std(dim=-1, keepdim=True)
        x_in, out = (x - mu) / (std + 1e-5), (lambda y: y * std + mu)
    else:
        x_in, out = x, (lambda y: y)
    pre = (x_in - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if activation == "topk":
        top = pre.topk(K, dim=-1)
        f = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    else:
        f = torch.relu(pre)
    return f, out(f @ w["W_dec"] + w["b_dec"])


@pytest.mark.parametrize("activation", ["relu", "topk"])
@pytest.mark.parametrize("norm", ["none", "constant_norm_rescale", "layer_norm"])
def test_codes_and_reconstruction_equal_prismas_own(tmp_path, activation, norm):
    path, w = prisma_folder(tmp_path / "sae", activation, norm)
    sae = load_sae(path)
    x = 3 * torch.randn(40, D, generator=torch.Generator().manual_seed(1)) + 1
    f, recon = reference(activation, norm, w, x)
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), recon, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.reconstruct_sparse(x, sae.encode_sparse(x)), recon, atol=1e-5, rtol=1e-5)
    assert sae.identity["format"] == "prisma" and sae.cfg["hook"] == "resid.3"


def test_its_hook_is_found_in_the_store_and_encoding_uses_the_normalisation(tmp_path, run_cli):
    path, w = prisma_folder(tmp_path / "sae", "topk", "layer_norm")
    acts = (2 * np.random.default_rng(0).standard_normal((10, 3, D)) + 0.5).astype(np.float32)
    store = tmp_path / "s.zarr"
    write_store(store, {"resid.2": acts, "resid.3": acts}, [f"k{i}" for i in range(10)], attrs={"model": "m"},
                dtype="float32")
    code, out, err = run_cli("encode", "--store", store, "--sae", path, "--quiet")
    assert code == 0 and "of hook resid.3" in out, err
    from clipsae.store.codes import Codes
    from clipsae.store.reader import ActivationStore

    codes = Codes(ActivationStore.open(store), "sae")
    x = torch.from_numpy(acts.reshape(-1, D))
    _, recon = reference("topk", "layer_norm", w, x)
    np.testing.assert_allclose(codes.sums().position_sq_err.sum(), float(((x - recon) ** 2).double().sum()), rtol=1e-4)


@pytest.mark.parametrize("cfg, message", [
    ({"activation_fn_str": "tanh-relu"}, "activation_fn_str 'tanh-relu' is not supported"),
    ({"architecture": "gated"}, "architecture 'gated' is not supported"),
    ({"normalize_activations": "expected_average_only_in"}, "normalize_activations 'expected_average_only_in'"),
])
def test_what_clipsae_does_not_read_gets_one_line(tmp_path, cfg, message):
    path, _ = prisma_folder(tmp_path / "sae", **cfg)
    with pytest.raises(ClipsaeError, match=message):
        load_sae(path)


def test_a_folder_with_two_weight_files_is_refused_naming_them(tmp_path):
    path, w = prisma_folder(tmp_path / "sae")
    torch.save(w, path / "other.pt")
    with pytest.raises(ClipsaeError, match="holds 2 weights .pt files: n_images_2600058.pt, other.pt"):
        load_sae(path)


@pytest.mark.parametrize("absent", ["activation_fn_str", "normalize_activations"])
def test_a_config_without_the_keys_whose_defaults_changed_is_refused_naming_them(tmp_path, absent):
    path, _ = prisma_folder(tmp_path / "sae")
    cfg = json.loads((path / "config.json").read_text())
    del cfg[absent]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ClipsaeError, match=f"does not name {absent}, and ViT-Prisma's default for it changed"):
        load_sae(path)


@dataclasses.dataclass
class VisionModelSAERunnerConfig:
    """A stand-in for Prisma's config class, with fields of the types its own holds."""

    d_in: int = D
    d_sae: int = N
    activation_fn_str: str = "topk"
    activation_fn_kwargs: dict = dataclasses.field(default_factory=lambda: {"k": K})
    normalize_activations: str = "layer_norm"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32


@contextlib.contextmanager
def importable_as(qualified: str, cls):
    """``cls`` pickles as ``qualified`` while inside; afterwards no such module exists, as where clipsae reads."""
    module_name, _, name = qualified.rpartition(".")
    parts = module_name.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    setattr(sys.modules[module_name], name, cls)
    cls.__module__, cls.__qualname__ = module_name, name
    try:
        yield
    finally:
        for n in names:
            del sys.modules[n]


def prisma_trainer_folder(path, checkpoints=(1000, 2000)):
    """What Prisma's train_sae.py checkpoint() writes: config.json, then per checkpoint N the model as save_model
    pickles it ({cfg: the config object, state_dict}) and the log feature sparsity. Returns the last weights."""
    with importable_as("vit_prisma.sae.config.VisionModelSAERunnerConfig", VisionModelSAERunnerConfig):
        path.mkdir()
        for seed, n in enumerate(checkpoints):
            w = prisma_folder(path / f"tmp{n}", "topk", "layer_norm", seed=seed)[1]
            torch.save({"cfg": VisionModelSAERunnerConfig(), "state_dict": w}, path / f"n_images_{n}.pt")
            torch.save(torch.randn(N), path / f"n_images_{n}_log_feature_sparsity.pt")
            (path / f"tmp{n}" / "config.json").rename(path / "config.json")
            shutil.rmtree(path / f"tmp{n}")
    return w


def test_the_trainers_checkpoint_folder_reads_as_its_last_checkpoint_without_running_its_pickle(tmp_path):
    w = prisma_trainer_folder(tmp_path / "run")
    sae = load_sae(tmp_path / "run")
    assert sae.identity["path"].endswith("run") and sae.cfg["activation_fn_str"] == "topk"
    x = 3 * torch.randn(40, D, generator=torch.Generator().manual_seed(1)) + 1
    f, recon = reference("topk", "layer_norm", w, x)
    torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), recon, atol=1e-5, rtol=1e-5)
    assert "vit_prisma.sae.config" not in sys.modules


def test_one_checkpoint_of_the_trainer_reads_by_its_file(tmp_path):
    prisma_trainer_folder(tmp_path / "run")
    first = load_sae(tmp_path / "run" / "n_images_1000.pt")
    last = load_sae(tmp_path / "run")
    assert not torch.equal(first.W_enc, last.W_enc)
    torch.testing.assert_close(first.W_dec, prisma_folder(tmp_path / "again", "topk", "layer_norm", seed=0)[1]["W_dec"])


def test_a_pickled_callable_beside_the_weights_is_never_called(tmp_path, capfd):
    payload = type("Payload", (), {"__reduce__": lambda self: (print, ("the pickle ran",))})
    with importable_as("evil.Payload", payload):
        path, w = prisma_folder(tmp_path / "sae")
        torch.save({**w, "x": payload()}, path / "n_images_2600058.pt")
    sae = load_sae(path)
    torch.testing.assert_close(sae.W_dec, w["W_dec"])
    assert "the pickle ran" not in capfd.readouterr().out
