"""Segmentation masks: the patch-labelling rule, the geometry, and what extract stores and refuses."""

import hashlib
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from clipsae.errors import ClipsaeError
from clipsae.pipeline.masks import mask_geometry, patch_labels, read_mask_classes
from clipsae.pipeline.synthetic import jpeg_bytes, make_synthetic_shards, png_bytes
from clipsae.pipeline.tarwrite import write_tar
from clipsae.store.reader import ActivationStore


def _plain_patch_labels(mask_HW, grid):
    rows, cols = grid
    h, w = mask_HW.shape
    labels, shares = [], []
    for r in range(rows):
        for c in range(cols):
            cell = [mask_HW[y, x] for y in range(h) for x in range(w) if y * rows // h == r and x * cols // w == c]
            values, counts = np.unique(cell, return_counts=True)
            best = values[np.flatnonzero(counts == counts.max())[0]]  # np.unique sorts: the smaller index
            labels.append(best)
            shares.append(counts.max() / len(cell))
    return np.array(labels), np.array(shares)


def test_patch_label_is_the_majority_class_and_its_share_as_a_plain_loop_finds():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, size=(23, 17))
    mask[:8, :6] = 3
    labels, shares = patch_labels(mask, (3, 3))
    want_labels, want_shares = _plain_patch_labels(mask, (3, 3))
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(shares.astype(np.float64), want_shares, rtol=1e-3)
    assert labels.dtype == np.uint16 and shares.dtype == np.float16


def test_patch_label_ties_go_to_the_smaller_class_index():
    mask = np.array([[5, 2], [2, 5]])
    labels, shares = patch_labels(mask, (1, 1))
    assert labels.tolist() == [2] and shares.tolist() == [0.5]


def test_mask_moves_with_its_image_through_resize_and_centre_crop():
    # A wide image: the resize to the shorter side and the centre crop both move pixels.
    image = Image.new("RGB", (160, 100), (0, 0, 0))
    mask = Image.new("L", (160, 100), 0)
    for im, value in ((image, (255, 0, 0)), (mask, 3)):
        im.paste(value, (90, 20, 140, 70))
    preprocess = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32)])
    red = np.asarray(preprocess(image))[..., 0] > 128
    moved = np.asarray(mask_geometry(preprocess)(Image.fromarray(np.asarray(mask).astype(np.int32), mode="I")))
    assert moved.shape == (32, 32) and set(np.unique(moved)) == {0, 3}
    iou = np.count_nonzero(red & (moved == 3)) / np.count_nonzero(red | (moved == 3))
    assert iou > 0.85


def test_mask_classes_file_reads_a_list_or_an_object_and_refuses_anything_else(tmp_path):
    f = tmp_path / "m.json"
    f.write_text('["unlabelled", "wall", "sky"]')
    assert read_mask_classes(f) == {0: "unlabelled", 1: "wall", 2: "sky"}
    f.write_text('{"3": "car", "1": "wall"}')
    assert read_mask_classes(f) == {1: "wall", 3: "car"}
    f.write_text('{"wall": 1}')
    with pytest.raises(ClipsaeError, match="JSON list of names or an object"):
        read_mask_classes(f)


def _extract(run_cli, shards, store, *extra):
    return run_cli("extract", "--model", "ViT-B-32", "--layers", "3", "--shards", shards, "--store", store,
                   "--batch-size", "4", "--quiet", *extra)


@pytest.fixture(scope="module")
def masked_store(tmp_path_factory):
    from clipsae.pipeline.config import ExtractConfig, ModelConfig
    from clipsae.pipeline.extract import run_extract

    root = tmp_path_factory.mktemp("masked")
    make_synthetic_shards(root / "sh", n_images=10, per_shard=5, seed=3)
    run_extract(ExtractConfig(ModelConfig("ViT-B-32"), layers="3", shards=str(root / "sh"), store=str(root / "s.zarr"),
                              batch_size=4, progress=False))
    return root


def test_extract_stores_each_patch_the_class_of_its_mask_through_the_model_geometry(masked_store):
    import open_clip

    s = ActivationStore.open(masked_store / "s.zarr")
    labels_IP, share_IP = s.patch_labels("resid.3")
    assert labels_IP.shape == share_IP.shape == (10, 49)
    assert s.mask_classes()[1] == "red circle"
    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32")
    geometry = mask_geometry(preprocess)
    with tarfile.open(masked_store / "sh" / "00001.tar") as tar:
        mask = np.asarray(Image.open(tar.extractfile("img0000007.seg.png")))
    moved = np.asarray(geometry(Image.fromarray(mask.astype(np.int32), mode="I")))
    want_labels, want_shares = _plain_patch_labels(moved[::4, ::4], (7, 7))  # 224 px / 4: the same cells
    image = list(s.keys()).index("img0000007")
    np.testing.assert_array_equal(labels_IP[image], want_labels)
    # The shape's class is the image's label + 1, and some patch carries it.
    assert int(s.labels()[image]) + 1 in labels_IP[image]


def test_patch_labels_are_checksummed_verified_and_readable_by_tensorstore(masked_store, tmp_path, run_cli):
    import shutil

    ts = pytest.importorskip("tensorstore", reason="tensorstore (a test extra) is not installed")
    s = ActivationStore.open(masked_store / "s.zarr")
    labels_IP, _ = s.patch_labels("resid.3")
    part = s.parts[0]
    got = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(
        s.path / "parts" / part.name / "patch_labels" / "7x7")}}).result().read().result()
    np.testing.assert_array_equal(got, labels_IP[:part.n_images])
    code, out, _ = run_cli("store", "info", masked_store / "s.zarr")
    assert code == 0 and "13 classes, grid(s) 7x7" in out
    # An altered chunk: verify names it, and a read refuses it.
    shutil.copytree(masked_store / "s.zarr", tmp_path / "s.zarr")
    chunk = next((tmp_path / "s.zarr" / "parts" / part.name / "patch_labels" / "7x7" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, out, err = run_cli("store", "verify", tmp_path / "s.zarr")
    assert code != 0 and "patch_labels/7x7" in out + err
    with pytest.raises(ClipsaeError, match="patch_labels/7x7"):
        ActivationStore.open(tmp_path / "s.zarr").patch_labels("resid.3")


def test_a_store_without_masks_has_no_patch_labels(tmp_path, run_cli):
    make_synthetic_shards(tmp_path / "sh", n_images=4, per_shard=4, masks=False)
    assert _extract(run_cli, tmp_path / "sh", tmp_path / "s.zarr")[0] == 0
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert s.mask_classes() is None and "mask_classes" not in s.config
    assert not (tmp_path / "s.zarr" / "parts" / "00000" / "patch_labels").exists()
    with pytest.raises(ClipsaeError, match="holds no patch labels"):
        s.patch_labels("resid.3")


def _tree_digest(path):
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _bad_tar(path, how):
    im = Image.new("RGB", (40, 30), (90, 90, 90))
    good = png_bytes(Image.new("L", (40, 30), 1))
    samples = []
    for i in range(3):
        mask = good
        if i == 1 and how == "size":
            mask = png_bytes(Image.new("L", (30, 30), 1))
        if i == 1 and how == "index":
            mask = png_bytes(Image.new("L", (40, 30), 200))
        sample = {"__key__": f"bad{i}", "jpg": jpeg_bytes(im), "cls": 0}
        if not (i == 1 and how == "missing"):
            sample["seg.png"] = mask
        samples.append(sample)
    write_tar(path, samples)


@pytest.mark.parametrize("how, message", [("size", "mask is 30x30, its image 40x30"),
                                          ("index", "class index 200, which the mask classes do not list"),
                                          ("missing", "has no mask \\(seg.png\\) while others have")])
def test_a_bad_mask_is_one_line_and_leaves_the_store_untouched(tmp_path, run_cli, how, message):
    make_synthetic_shards(tmp_path / "sh", n_images=4, per_shard=4, seed=2)
    assert _extract(run_cli, tmp_path / "sh", tmp_path / "s.zarr")[0] == 0
    before = _tree_digest(tmp_path / "s.zarr")
    _bad_tar(tmp_path / "sh" / "00001.tar", how)
    code, out, err = _extract(run_cli, tmp_path / "sh", tmp_path / "s.zarr")
    assert code != 0 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "00001.tar: sample bad1" in line and __import__("re").search(message, line)
    assert _tree_digest(tmp_path / "s.zarr") == before


def test_masks_without_class_names_are_refused_rather_than_dropped(tmp_path, run_cli):
    make_synthetic_shards(tmp_path / "sh", n_images=2, per_shard=2)
    (tmp_path / "sh" / "mask_classes.json").unlink()
    code, _, err = _extract(run_cli, tmp_path / "sh", tmp_path / "s.zarr")
    assert code != 0 and "carries a mask (seg.png) but no mask classes" in err
    assert not (tmp_path / "s.zarr").exists()
    (tmp_path / "m.json").write_text(json.dumps(["ground"] + [f"c{i}" for i in range(12)]))
    assert _extract(run_cli, tmp_path / "sh", tmp_path / "s.zarr", "--mask-classes", tmp_path / "m.json")[0] == 0
    assert ActivationStore.open(tmp_path / "s.zarr").mask_classes()[12] == "c11"
