import open_clip
import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.pipeline.hooks import HookedForward, resolve_hooks


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32").visual.eval()


@pytest.fixture(scope="module")
def rn50():
    torch.manual_seed(0)
    return open_clip.create_model("RN50").visual.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tokens", ["all", "cls", "patches"])
def test_vit_hooks_equal_open_clip_forward_intermediates(vit, images, tokens):
    hooks = resolve_hooks(vit, ["3", "-1"] + ([] if tokens == "patches" else ["embed"]), tokens)
    ours = HookedForward(vit, hooks, tokens)(images)
    with torch.no_grad():
        ref = vit.forward_intermediates(images, indices=[3, 11], output_fmt="NLC", output_extra_tokens=True)
    for name, i in (("resid.3", 0), ("resid.11", 1)):
        full = torch.cat([ref["image_intermediates_prefix"][i], ref["image_intermediates"][i]], dim=1)
        want = {"all": full, "cls": full[:, :1], "patches": full[:, 1:]}[tokens]
        torch.testing.assert_close(ours[name], want, atol=1e-5, rtol=1e-5)
    if tokens != "patches":
        torch.testing.assert_close(ours["embed"][:, 0], ref["image_features"], atol=1e-5, rtol=1e-5)


def test_vit_ln_post_is_the_pooled_token_before_proj(vit, images):
    out = HookedForward(vit, resolve_hooks(vit, ["ln_post", "embed"], "cls"), "cls")(images)
    torch.testing.assert_close(out["ln_post"][:, 0] @ vit.proj, out["embed"][:, 0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(out["embed"][:, 0], vit(images), atol=1e-5, rtol=1e-5)


def test_vit_ln_pre_is_the_input_to_block_zero(vit, images):
    out = HookedForward(vit, resolve_hooks(vit, ["ln_pre", "0"], "all"), "all")(images)
    with torch.no_grad():
        torch.testing.assert_close(vit.transformer.resblocks[0](out["ln_pre"]), out["resid.0"], atol=1e-5, rtol=1e-5)


def test_truncated_forward_equals_full_forward(vit, images):
    short = HookedForward(vit, resolve_hooks(vit, ["4"], "all"), "all")
    full = HookedForward(vit, resolve_hooks(vit, ["4", "embed"], "all"), "all")
    assert short.last == 4 and full.last == 11
    torch.testing.assert_close(short(images)["resid.4"], full(images)["resid.4"], atol=0, rtol=0)


def test_resnet_hooks_equal_open_clip_forward_intermediates(rn50, images):
    names = ["layer1", "layer2", "layer3", "layer4", "attnpool"]
    ours = HookedForward(rn50, resolve_hooks(rn50, names, "all"), "all")(images)
    with torch.no_grad():
        ref = rn50.forward_intermediates(images, indices=[1, 2, 3, 4])
    for i, name in enumerate(names[:4]):
        want = ref["image_intermediates"][i].flatten(2).transpose(1, 2)
        torch.testing.assert_close(ours[name], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["attnpool"][:, 0], ref["image_features"], atol=1e-5, rtol=1e-5)
    assert ours["layer4"].shape == (2, 49, 2048)


def test_resnet_forward_stops_after_the_last_stage_needed(rn50, images):
    f = HookedForward(rn50, resolve_hooks(rn50, ["layer2"], "patches"), "patches")
    assert f.last == 2 and set(f(images)) == {"layer2"}


@pytest.mark.parametrize(
    "model, items, tokens, message",
    [
        ("vit", ["12"], "all", "layer 12 is out of range: the model has 12 blocks"),
        ("vit", ["-13"], "all", "out of range"),
        ("vit", ["attnpool"], "all", "unknown hook 'attnpool' for a ViT"),
        ("vit", ["embed"], "patches", "pooled vector with no patch tokens"),
        ("rn50", ["attnpool"], "patches", "pooled vector with no patch tokens"),
        ("rn50", ["layer4"], "cls", "no CLS token"),
        ("rn50", ["3"], "all", "integer layers are for ViTs"),
        ("vit", ["3", "resid.3"], "all", "names a hook twice"),
    ],
)
def test_bad_hooks_are_refused_with_the_reason(vit, rn50, model, items, tokens, message):
    with pytest.raises(ClipsaeError, match=message):
        resolve_hooks(vit if model == "vit" else rn50, items, tokens)


def test_negative_layers_are_stored_under_their_positive_index(vit):
    assert [h.name for h in resolve_hooks(vit, ["-1", "-12"], "cls")] == ["resid.11", "resid.0"]


def test_every_hook_extract_names_is_recognised_as_one(vit, rn50):
    from clipsae.store.layout import EXTRACT_HOOK_NAME

    vit_hooks = resolve_hooks(vit, ["0", "11", "ln_pre", "ln_post", "embed"], "all")
    rn_hooks = resolve_hooks(rn50, ["layer1", "layer2", "layer3", "layer4", "attnpool"], "all")
    assert all(EXTRACT_HOOK_NAME.fullmatch(h.name) for h in vit_hooks + rn_hooks)
    assert not EXTRACT_HOOK_NAME.fullmatch("blocks.9.hook_resid_post")


@pytest.mark.parametrize("tokens, said", [("all", "; CLS then 7x7 patches row-major"), ("cls", "; the CLS token only"),
                                          ("patches", "; 7x7 patches row-major, no CLS")])
def test_a_hooks_meaning_names_the_tokens_the_store_keeps(vit, tokens, said):
    layouts = HookedForward(vit, resolve_hooks(vit, ["3", "ln_pre"], tokens), tokens).layouts(torch.device("cpu"))
    assert all(h.meaning.endswith(said) for h in layouts)
