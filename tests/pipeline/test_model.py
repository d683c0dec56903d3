import hashlib

import pytest

from clipsae.errors import ClipsaeError
from clipsae.pipeline.config import ModelConfig
from clipsae.pipeline.model import store_model_config


def test_store_model_config_reloads_the_recorded_weights(tmp_path):
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert store_model_config({"model": "RN50", "pretrained": "random-init(seed=7)"}, {}) == ModelConfig("RN50", None, 7)
    assert store_model_config({"model": "ViT-L-14", "pretrained": "laion2b_s32b_b82k"}, {}) == \
        ModelConfig("ViT-L-14", "laion2b_s32b_b82k")
    assert store_model_config({"model": "ViT-B-32", "pretrained": f"file:sha256:{digest}"},
                              {"checkpoint_path": str(ckpt)}) == ModelConfig("ViT-B-32", str(ckpt))
    assert store_model_config({"model": "ViT-B-32", "pretrained": "x"}, {}, pretrained="y") == ModelConfig("ViT-B-32", "y")
    assert store_model_config({"model": "ViT-B-32", "pretrained": "random-init(seed=3)"}, {}, model="RN50") == \
        ModelConfig("RN50", None, 3)


@pytest.mark.parametrize("content, message", [(None, "which is not there now"), (b"changed", "no longer the checkpoint")])
def test_a_checkpoint_that_moved_or_changed_is_named(tmp_path, content, message):
    ckpt = tmp_path / "w.pt"
    if content is not None:
        ckpt.write_bytes(content)
    with pytest.raises(ClipsaeError, match=message):
        store_model_config({"model": "ViT-B-32", "pretrained": "file:sha256:00"}, {"checkpoint_path": str(ckpt)})


def test_load_clip_builds_once_per_config_and_again_for_a_rewritten_checkpoint(tmp_path):
    import os

    import open_clip
    import torch

    from clipsae.pipeline.model import load_clip

    first = load_clip(ModelConfig("RN50", init_seed=3))
    assert load_clip(ModelConfig("RN50", init_seed=3)) is first
    other = load_clip(ModelConfig("RN50", init_seed=4))
    assert other is not first
    assert not torch.equal(other.model.visual.conv1.weight, first.model.visual.conv1.weight)

    ckpt = tmp_path / "rn50.pt"
    torch.manual_seed(1)
    torch.save(open_clip.create_model("RN50").state_dict(), ckpt)
    cfg = ModelConfig("RN50", pretrained=str(ckpt))
    one = load_clip(cfg)
    assert load_clip(cfg) is one
    torch.manual_seed(2)
    torch.save(open_clip.create_model("RN50").state_dict(), ckpt)
    os.utime(ckpt, ns=(0, ckpt.stat().st_mtime_ns + 10**9))  # a rewrite within the clock's tick must still count
    again = load_clip(cfg)
    assert again is not one
    assert not torch.equal(again.model.visual.conv1.weight, one.model.visual.conv1.weight)
