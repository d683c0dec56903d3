import io
import shutil

import numpy as np
import pytest
from PIL import Image

from clipsae.analysis.images import load_images
from clipsae.errors import ClipsaeError
from clipsae.pipeline.tario import TarReport, iter_samples
from clipsae.store.reader import ActivationStore
from tests.analysis.helpers import store_from_tars


@pytest.fixture
def tar_store(shards, tmp_path):
    return store_from_tars(tmp_path / "s.zarr", list(shards.glob("*.tar")))


def tar_image(store, image):
    part = next(p for p in store.parts if p.offset <= image < p.offset + p.n_images)
    data = {k: d for k, d, _ in iter_samples(part.source, None, TarReport())}[store.keys()[image]]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_load_images_returns_each_rows_image_from_its_tar(tar_store):
    store = ActivationStore.open(tar_store)
    wanted = [0, 7, 17, 8]
    got = load_images(store, wanted)
    assert sorted(got) == sorted(wanted)
    for i in wanted:
        assert np.array_equal(np.asarray(got[i]), tar_image(store, i))


def test_moved_tars_are_found_through_shards_and_missing_ones_named(tar_store, tmp_path):
    store = ActivationStore.open(tar_store)
    moved = tmp_path / "moved"
    shutil.copytree(store.parts[0].source.rsplit("/", 1)[0], moved)
    got = load_images(store, [1, 9], shards=moved)
    assert sorted(got) == [1, 9] and all(np.array_equal(np.asarray(got[i]), tar_image(store, i)) for i in (1, 9))
    with pytest.raises(ClipsaeError, match="pass --shards"):
        load_images(store, [1], shards=tmp_path / "nowhere")
