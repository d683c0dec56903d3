"""Towers with a timm trunk (SigLIP 2, EVA-02, MobileCLIP inside open_clip; DINOv2 with registers alone):
stored activations against the model's own forward, read through module hooks rather than our path."""

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipsae.errors import ClipsaeError
from clipsae.pipeline.config import ModelConfig
from clipsae.pipeline.hooks import HookedForward, resolve_hooks
from clipsae.pipeline.model import load_model
from clipsae.pipeline.synthetic import make_synthetic_shards
from clipsae.store import ActivationStore, verify
from tests.conftest import assert_same_store
from tests.pipeline.test_extract import extract, tar_images

pytestmark = pytest.mark.long_file

DINO = "timm:vit_small_patch14_reg4_dinov2"


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    make_synthetic_shards(out, n_images=2, per_shard=1, seed=3, masks=False)
    return out


@pytest.fixture(scope="module")
def dino_weights(tmp_path_factory):
    """A state dict of the timm model, saved as a user's checkpoint would be."""
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("w") / "dinov2_small_reg4.pth"
    torch.save(load_model(ModelConfig(DINO, None, init_seed=5)).visual.trunk.state_dict(), path)
    return path


@functools.lru_cache(maxsize=None)
def tower_visual(model: str):
    """The vision tower of ``model`` with random weights, built once per test process."""
    return load_model(ModelConfig(model)).visual


def own_forward(visual, images, hooks: list[str]) -> dict[str, torch.Tensor]:
    """Each hook as the model's full forward computes it, caught by forward hooks on its modules."""
    trunk, caught, handles = visual.trunk, {}, []

    def keep(name, pre=False):
        def fn(module, inputs, output=None):
            caught[name] = (inputs[0] if pre else output)
        return fn

    for h in hooks:
        if h.startswith("resid."):
            handles.append(trunk.blocks[int(h[6:])].register_forward_hook(keep(h)))
        elif h.startswith("stage."):
            handles.append(trunk.stages[int(h[6:])].register_forward_hook(keep(h)))
        elif h == "norm":
            handles.append(trunk.norm.register_forward_hook(keep(h)))
        elif h == "pooled":
            handles.append(trunk.get_classifier().register_forward_pre_hook(keep(h, pre=True)))
    with torch.no_grad():
        caught["embed"] = visual(images)
    for handle in handles:
        handle.remove()
    return {h: caught[h].flatten(2).transpose(1, 2) if caught[h].ndim == 4 else
            caught[h] if caught[h].ndim == 3 else caught[h][:, None] for h in hooks}


TOWERS = {
    "siglip2": ("ViT-B-32-SigLIP2-256", ["3", "-1", "norm", "pooled", "embed"], ["resid.3", "resid.11", "norm", "pooled", "embed"]),
    "eva02": ("EVA02-B-16", ["2", "pooled", "embed"], ["resid.2", "pooled", "embed"]),
    "dinov2_reg4": (DINO, ["1", "-1", "norm", "pooled"], ["resid.1", "resid.11", "norm", "pooled"]),
    "mobileclip": ("MobileCLIP2-S0", ["stage.1", "-1", "pooled", "embed"], ["stage.1", "stage.3", "pooled", "embed"]),
}


@pytest.mark.parametrize("tower", list(TOWERS))
def test_stored_activations_equal_the_towers_own_forward_in_float16(tower, small_shards, dino_weights, tmp_path):
    model, layers, names = TOWERS[tower]
    pretrained = str(dino_weights) if model == DINO else None
    extract(small_shards, tmp_path / "s.zarr", layers=layers, model=model, dtype="float16", batch_size=2,
            pretrained=pretrained)
    s = ActivationStore.open(tmp_path / "s.zarr")
    loaded = load_model(ModelConfig(model, pretrained))
    x = torch.stack([loaded.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in tar_images(small_shards)])
    want = own_forward(loaded.visual, x, names)
    for name in names:
        got, ref = s.read(name, slice(None)).astype(np.float32), want[name].numpy()
        assert got.shape == ref.shape, name
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 5e-3, name
    assert list(s.keys()) == [f"img{i:07d}" for i in range(2)]
    assert verify(s).ok


def test_extract_of_a_timm_tower_passes_pretrained_on(small_shards, tmp_path):
    with pytest.raises(ClipsaeError, match="is not a pretrained tag of timm model vit_small_patch14_reg4_dinov2"):
        extract(small_shards, tmp_path / "s.zarr", layers=["1"], model=DINO, pretrained="no_such_tag")
    assert not (tmp_path / "s.zarr").exists()


def test_registers_and_cls_lead_the_tokens_and_patches_leave_them_out(dino_weights):
    visual = load_model(ModelConfig(DINO, str(dino_weights))).visual
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    everything = HookedForward(visual, resolve_hooks(visual, ["2"], "all"), "all")
    patches = HookedForward(visual, resolve_hooks(visual, ["2"], "patches"), "patches")
    cls = HookedForward(visual, resolve_hooks(visual, ["2"], "cls"), "cls")
    (lay_all,), (lay_patches,), (lay_cls,) = (f.layouts(torch.device("cpu")) for f in (everything, patches, cls))
    assert (lay_all.n_tokens, lay_all.cls_token, lay_all.registers, lay_all.grid) == (1 + 4 + 37 * 37, True, 4, (37, 37))
    assert (lay_patches.n_tokens, lay_patches.prefix, lay_patches.grid) == (37 * 37, 0, (37, 37))
    assert (lay_cls.n_tokens, lay_cls.cls_token, lay_cls.grid) == (1, True, None)
    full = everything(x)["resid.2"]
    torch.testing.assert_close(patches(x)["resid.2"], full[:, 5:], rtol=0, atol=0)
    torch.testing.assert_close(cls(x)["resid.2"], full[:, :1], rtol=0, atol=0)
    with torch.no_grad():
        ref = visual.trunk.forward_features(x)  # CLS, then the 4 registers' own learned tokens pass through
    assert ref.shape[1] == full.shape[1]


def test_two_workers_on_a_timm_tower_give_the_one_worker_store(small_shards, tmp_path):
    args = dict(layers=["stage.2", "pooled"], model="MobileCLIP2-S0", batch_size=2)
    extract(small_shards, tmp_path / "one.zarr", **args)
    for i in range(2):
        extract(small_shards, tmp_path / "two.zarr", num_workers=2, worker_index=i, **args)
    assert_same_store(tmp_path / "two.zarr", tmp_path / "one.zarr")


@pytest.mark.parametrize("model, items, tokens, message", [
    ("ViT-B-32-SigLIP2-256", ["3"], "cls", "no CLS token.*pooled hook pooled"),
    ("ViT-B-32-SigLIP2-256", ["12"], "all", "layer 12 is out of range: the model has 12 blocks"),
    ("ViT-B-32-SigLIP2-256", ["ln_pre"], "all", "unknown hook 'ln_pre' for a timm ViT"),
    ("MobileCLIP2-S0", ["stage.4"], "all", "layer 4 is out of range: the model has 4 stages"),
    ("MobileCLIP2-S0", ["stage.1"], "cls", "is a feature map, with no CLS token"),
    (DINO, ["embed"], "all", "has no image embedding beyond its pooled features"),
])
def test_bad_hooks_of_timm_towers_are_refused_in_one_line(model, items, tokens, message):
    visual = tower_visual(model)
    with pytest.raises(ClipsaeError, match=message):
        resolve_hooks(visual, items, tokens)


def test_unknown_timm_name_is_refused_with_similar_names():
    with pytest.raises(ClipsaeError, match=r"unknown timm model 'vit_small_patch14_dinov9'.*similar: .*dinov2"):
        load_model(ModelConfig("timm:vit_small_patch14_dinov9"))


def test_a_state_dict_of_another_model_names_its_first_mismatched_key(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 384), "blocks.0.norm1.weight": torch.zeros(7)}, path)
    with pytest.raises(ClipsaeError, match=r"not a state dict of timm model vit_small_patch14_reg4_dinov2: cls_token"
                                           r"|is missing from the file"):
        load_model(ModelConfig(DINO, str(path)))


def test_timm_pretrained_tag_that_cannot_be_fetched_fails_in_one_line(small_shards, tmp_path):
    import os

    from tests.conftest import cli_process

    # Offline mode makes huggingface_hub fail at once instead of after its network retries.
    p = cli_process("extract", "--model", DINO, "--pretrained", "lvd142m", "--layers", "1", "--shards", small_shards,
                    "--store", tmp_path / "s.zarr", "--quiet", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.wait(timeout=120) == 1
    err = p.stderr.read()
    assert err.startswith("error: could not load pretrained weights 'lvd142m' for timm model vit_small_patch14_reg4_dinov2")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s.zarr").exists()


def test_an_eva_trunk_without_prefix_tokens_reads_its_patches():
    """PE-Core's trunk (an Eva with neither CLS nor registers): timm's forward_intermediates refuses to split
    off prefix tokens it has none of, so none are asked for."""
    import timm

    from clipsae.pipeline.towers.timm_common import TimmAlone

    trunk = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, class_token=False,
                              global_pool="avg").eval()
    visual = TimmAlone(trunk, (224, 224))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    forward = HookedForward(visual, resolve_hooks(visual, ["1", "norm"], "all"), "all")
    (lay, _) = forward.layouts(torch.device("cpu"))
    assert (lay.n_tokens, lay.prefix, lay.grid) == (256, 0, (16, 16))
    torch.testing.assert_close(forward(x)["norm"], own_forward(visual, x, ["norm"])["norm"])


def test_pooled_vectors_reach_the_embedding_with_the_heads_bias():
    """EVA-02's trunk ends in a Linear with a bias: pooled vectors (points) go through it as the model takes
    them, directions without the bias."""
    from clipsae.pipeline.towers import tower_for

    visual = load_model(ModelConfig("EVA02-B-16")).visual
    with torch.no_grad():
        visual.trunk.get_classifier().bias.normal_(0, 0.5)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    out = HookedForward(visual, resolve_hooks(visual, ["pooled", "embed"], "all"), "all")(x)
    tower = tower_for(visual)
    with torch.no_grad():
        torch.testing.assert_close(tower.point_map("pooled")(out["pooled"][:, 0]), out["embed"][:, 0], rtol=1e-4, atol=1e-4)
        d = out["pooled"][:, 0]
        torch.testing.assert_close(tower.joint_map("pooled")(d), d @ visual.trunk.get_classifier().weight.T)
