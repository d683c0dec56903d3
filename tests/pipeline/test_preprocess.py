import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clipsae.pipeline.preprocess import split_preprocess


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((97, 150), (300, 211), (224, 224))]


@pytest.mark.parametrize("model, pretrained_cfg", [("ViT-B-32", {}), ("RN50", {"interpolation": "bilinear",
                                                                             "resize_mode": "squash"})])
def test_split_preprocess_gives_bitwise_the_images_of_open_clips_transform(model, pretrained_cfg):
    _, _, pre = open_clip.create_model_and_transforms(model, image_interpolation=pretrained_cfg.get("interpolation"),
                                                      image_resize_mode=pretrained_cfg.get("resize_mode"))
    split = split_preprocess(pre)
    for im in _images():
        u8 = split.host(im)
        assert u8.dtype == torch.uint8
        assert torch.equal(split.finish(u8[None])[0], pre(im))


def test_a_transform_of_another_shape_is_not_split():
    assert split_preprocess(T.Compose([T.ToTensor(), T.Lambda(lambda x: x * 2)])) is None
    assert split_preprocess(T.Compose([T.Resize(8)])) is None
