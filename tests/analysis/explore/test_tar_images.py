"""Store images read straight from their tars, and what the model saw of them."""

import numpy as np
from PIL import Image

from clipsae.analysis.explore.tar_images import TarImages, list_tar_images, model_view
from clipsae.pipeline.tario import TarReport, iter_samples


def test_listed_offsets_read_the_bytes_the_tar_iterator_gives(shards):
    for tar in sorted(shards.glob("*.tar")):
        members = list_tar_images(tar)
        with open(tar, "rb") as fh:
            for key, data, _ in iter_samples(str(tar), None, TarReport()):
                offset, size = members[key]
                fh.seek(offset)
                assert fh.read(size) == data


def test_a_store_image_is_its_tars_image(encoded_tar_store):
    store, images = encoded_tar_store
    tars = TarImages(store)
    for i in (0, store.n_images - 1):
        np.testing.assert_array_equal(np.asarray(tars.image(i)), np.asarray(images[i]))


def test_model_view_resizes_the_shorter_side_and_crops_the_centre():
    im = Image.new("RGB", (300, 150))
    im.paste((255, 0, 0), (0, 0, 75, 150))  # the left quarter, which the centre crop leaves out
    seen = model_view(im, {"resize": 224, "crop": [224, 224]})
    assert seen.size == (224, 224)
    assert np.asarray(seen)[:, :, 0].max() < 40
    assert model_view(im, None).size == (300, 150)
    assert model_view(im, {"resize": [100, 50]}).size == (50, 100)
