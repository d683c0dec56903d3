import io
import os
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipsae.errors import ClipsaeError
from clipsae.pipeline.config import ExtractConfig, ModelConfig
from clipsae.pipeline.extract import run_extract
from clipsae.pipeline.synthetic import draw, jpeg_bytes, make_synthetic_shards
from clipsae.pipeline.tarwrite import write_tar
from clipsae.store import ActivationStore, verify
from tests.conftest import assert_same_store, cli_process, invoke_cli

pytestmark = pytest.mark.long_file


def extract(shards, store, layers=("2", "5"), tokens="all", model="ViT-B-32", **kw):
    cfg = ExtractConfig(
        model=ModelConfig(name=model, pretrained=kw.pop("pretrained", None)), layers=list(layers), tokens=tokens, shards=str(shards),
        store=str(store), batch_size=kw.pop("batch_size", 4), progress=False, **kw,
    )
    return run_extract(cfg)


def reference_activations(model_name, images_bytes, layers, tokens):
    """open_clip's own computation, outside our pipeline: preprocess + forward_intermediates."""
    torch.manual_seed(0)
    model, _, pre = open_clip.create_model_and_transforms(model_name)
    visual = model.visual.eval()
    x = torch.stack([pre(Image.open(io.BytesIO(b)).convert("RGB")) for b in images_bytes])
    with torch.no_grad():
        if model_name.startswith("RN"):
            ref = visual.forward_intermediates(x, indices=[4])
            return {"layer4": ref["image_intermediates"][0].flatten(2).transpose(1, 2), "attnpool": ref["image_features"][:, None]}
        idx = [int(layer) for layer in layers]
        ref = visual.forward_intermediates(x, indices=idx, output_fmt="NLC", output_extra_tokens=True)
    out = {}
    for i, layer in enumerate(idx):
        full = torch.cat([ref["image_intermediates_prefix"][i], ref["image_intermediates"][i]], dim=1)
        out[f"resid.{layer}"] = {"all": full, "cls": full[:, :1], "patches": full[:, 1:]}[tokens]
    return out


def tar_images(shard_dir: Path) -> list[bytes]:
    out = []
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as t:
            out += [t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg")]
    return out


@pytest.mark.parametrize("tokens", ["all", "cls", "patches"])
def test_stored_vit_activations_equal_open_clip_float32(shards, tmp_path, tokens):
    extract(shards, tmp_path / "s.zarr", layers=("1", "3"), tokens=tokens, dtype="float32")
    s = ActivationStore.open(tmp_path / "s.zarr")
    ref = reference_activations("ViT-B-32", tar_images(shards), ["1", "3"], tokens)
    for h in ("resid.1", "resid.3"):
        np.testing.assert_allclose(s.read(h, slice(None)), ref[h].numpy(), atol=1e-5, rtol=1e-5)
        lay = s.layout(h)
        assert (lay.cls_token, lay.grid) == {"all": (True, (7, 7)), "cls": (True, None), "patches": (False, (7, 7))}[tokens]


def test_stored_resnet_activations_equal_open_clip_float32(shards, tmp_path):
    extract(shards, tmp_path / "s.zarr", model="RN50", layers=("layer4", "attnpool"), dtype="float32")
    s = ActivationStore.open(tmp_path / "s.zarr")
    ref = reference_activations("RN50", tar_images(shards), None, "all")
    for h in ("layer4", "attnpool"):
        np.testing.assert_allclose(s.read(h, slice(None)), ref[h].numpy(), atol=1e-5, rtol=1e-5)
    assert (s.layout("layer4").cls_token, s.layout("layer4").grid) == (False, (7, 7))
    assert (s.layout("attnpool").cls_token, s.layout("attnpool").grid) == (False, None)


def test_store_keeps_key_label_and_source_of_every_image(shards, tmp_path):
    r = extract(shards, tmp_path / "s.zarr", layers=("0",), tokens="cls")
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert r.images == s.n_images == 18 and len(s.parts) == 3
    assert list(s.keys()) == [f"img{i:07d}" for i in range(18)]
    assert (s.labels() >= 0).all()
    assert Path(s.sources()[0]).name == "00000.tar" and Path(s.sources()[-1]).name == "00002.tar"
    prov = s.config
    assert prov["model"] == "ViT-B-32" and prov["preprocess"]["mean"][0] == pytest.approx(0.48145466)
    assert "resblocks[0]" in prov["hooks"]["resid.0"]["meaning"]
    # Chunks are fitted to each tar's sample count: the activations take exactly their bytes on disk.
    chunk_files = [f for f in (tmp_path / "s.zarr" / "parts").rglob("acts/resid.0/c/**/*") if f.is_file()]
    assert sum(f.stat().st_size for f in chunk_files) == 18 * 768 * 2


def test_rerun_skips_complete_parts(shards, tmp_path):
    extract(shards, tmp_path / "s.zarr", layers=("0",), tokens="cls")
    r = extract(shards, tmp_path / "s.zarr", layers=("0",), tokens="cls")
    assert r.parts_written == [] and len(r.parts_skipped) == 3 and r.images == 0


def test_loader_processes_give_the_same_store(shards, tmp_path):
    extract(shards, tmp_path / "a.zarr", layers=("1",), tokens="cls")
    extract(shards, tmp_path / "b.zarr", layers=("1",), tokens="cls", loader_workers=2)
    assert_same_store(tmp_path / "a.zarr", tmp_path / "b.zarr")


def _bad_shards(root: Path) -> Path:
    import random

    rng = random.Random(0)
    root.mkdir()
    good = [{"__key__": f"g{i}", "jpg": jpeg_bytes(draw(i % 12, rng)), "cls": i % 12} for i in range(4)]
    corrupt = jpeg_bytes(draw(0, rng))
    write_tar(root / "a_corrupt.tar", [good[0], {"__key__": "bad0", "jpg": b"not a jpeg", "cls": 1},
                                       {"__key__": "bad1", "jpg": corrupt[: len(corrupt) // 2], "cls": 1}, good[1]])
    write_tar(root / "b_empty.tar", [])
    write_tar(root / "c_nolabel.tar", [{"__key__": "n0", "jpg": good[2]["jpg"]}, {"__key__": "n1", "png": _png(rng)}])
    full = write_tar(root / "d_trunc.tar", [{"__key__": f"t{i}", "jpg": g["jpg"], "cls": 3} for i, g in enumerate(good)])
    data = full.read_bytes()
    full.write_bytes(data[: int(len(data) * 0.6)])
    return root


def _png(rng) -> bytes:
    buf = io.BytesIO()
    draw(5, rng).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_images_and_tars_are_skipped_counted_and_listed(tmp_path):
    shards = _bad_shards(tmp_path / "bad")
    r = extract(shards, tmp_path / "s.zarr", layers=("0",), tokens="cls", skip_bad_tars=True)
    s = ActivationStore.open(tmp_path / "s.zarr")
    parts = {p.name: p for p in s.parts}
    assert set(parts) == {"a_corrupt", "b_empty", "c_nolabel", "d_trunc"}
    assert [f["key"] for f in parts["a_corrupt"].attrs["failures"]] == ["bad0", "bad1"]
    assert parts["a_corrupt"].n_images == 2 and r.failed == 2
    assert parts["b_empty"].n_images == 0
    assert parts["c_nolabel"].n_images == 2
    assert parts["d_trunc"].attrs["truncated"] and 0 < parts["d_trunc"].n_images < 4
    assert r.truncated == ["d_trunc"]
    labels = dict(zip(s.keys(), s.labels()))
    assert labels["n0"] == labels["n1"] == -1 and labels["t0"] == 3
    assert verify(s).ok


@pytest.mark.parametrize("make", [lambda p: write_tar(p, []), lambda p: p.write_text("not a tar, only named one\n")],
                         ids=["empty tar", "text file"])
def test_a_tar_without_an_image_stops_extract_naming_it(tmp_path, run_cli, make):
    make_synthetic_shards(tmp_path / "sh", n_images=2, per_shard=2)
    make(tmp_path / "sh" / "zz_bad.tar")
    args = ("extract", "--model", "ViT-B-32", "--layers", "0", "--tokens", "cls", "--shards", tmp_path / "sh",
            "--store", tmp_path / "s.zarr", "--quiet")
    code, _, err = run_cli(*args)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'sh' / 'zz_bad.tar'} holds no readable image" in err and "--skip-bad-tars" in err
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert s.n_images == 2 and verify(s).ok  # the good tar before it is kept
    code, out, err = run_cli(*args, "--skip-bad-tars")
    assert code == 0 and "skipped 1 finished tars" in out, err


def test_label_key_reads_a_json_field(tmp_path):
    make_synthetic_shards(tmp_path / "sh", n_images=4, per_shard=4)
    import json
    import tarfile as tf

    # Rewrite with labels only in json under another field, as img2dataset output would carry them.
    with tf.open(tmp_path / "sh" / "00000.tar") as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    samples = []
    for name, data in members.items():
        if name.endswith(".jpg"):
            key = name[:-4]
            meta = json.loads(members[key + ".json"])
            samples.append({"__key__": key, "jpg": data, "json": {"class_id": meta["label"] + 100}})
    write_tar(tmp_path / "sh" / "00000.tar", samples)
    extract(tmp_path / "sh", tmp_path / "s.zarr", layers=("0",), tokens="cls", label_key="class_id")
    assert (ActivationStore.open(tmp_path / "s.zarr").labels() >= 100).all()


EXTRACT_ARGS = ["extract", "--model", "ViT-B-32", "--layers", "1,3", "--tokens", "all", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def four_tars(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    make_synthetic_shards(out, n_images=24, per_shard=6, seed=2)
    return out


@pytest.fixture(scope="module")
def reference_store(four_tars, tmp_path_factory):
    """What EXTRACT_ARGS write, extracted in this process."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    extract(four_tars, path, layers=("1", "3"), tokens="all", batch_size=2)
    return path


def test_kill_9_then_same_command_gives_the_uninterrupted_store(four_tars, reference_store, tmp_path):
    store = tmp_path / "s.zarr"
    p = cli_process(*EXTRACT_ARGS, "--shards", four_tars, "--store", store)
    parts = store / "parts"
    deadline = time.monotonic() + 240
    # Kill once one part is complete and the next one has begun: mid-part.
    while time.monotonic() < deadline and p.poll() is None:
        done = [d for d in parts.glob("*/zarr.json") if '"complete": true' in d.read_text()] if parts.exists() else []
        if len(done) >= 1 and len(list(parts.iterdir())) >= 2:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert ActivationStore.open(store).n_images < 24
    code, _, err = invoke_cli(*EXTRACT_ARGS, "--shards", four_tars, "--store", store)
    assert code == 0, err
    assert_same_store(store, reference_store)
    assert verify(ActivationStore.open(store)).ok


def test_two_workers_at_once_write_every_image_exactly_once(four_tars, reference_store, tmp_path):
    store = tmp_path / "s.zarr"
    procs = [cli_process(*EXTRACT_ARGS, "--shards", four_tars, "--store", store, "--num-workers", "2",
                         "--worker-index", str(i)) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    s = ActivationStore.open(store)
    assert len(set(s.keys())) == s.n_images == 24
    assert_same_store(store, reference_store)
    assert "hook_stats" in s.attrs


def test_slurm_array_variables_pick_the_share(four_tars, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    r = extract(four_tars, tmp_path / "s.zarr", layers=("0",), tokens="cls")
    assert r.parts_written == ["00002"]


def test_card_command_on_vit_l_14(tmp_path, run_cli):
    make_synthetic_shards(tmp_path / "sh", n_images=2, per_shard=2)
    code, out, err = run_cli("extract", "--model", "ViT-L-14", "--layers", "20,22", "--shards",
                             tmp_path / "sh" / "{00000..00000}.tar", "--store", tmp_path / "acts.zarr", "--quiet")
    assert code == 0, err
    s = ActivationStore.open(tmp_path / "acts.zarr")
    assert s.hooks == ["resid.20", "resid.22"]
    assert s.read("resid.22", slice(None)).shape == (2, 257, 1024)


def test_local_checkpoint_is_recorded_by_its_sha256(shards, tmp_path):
    import hashlib

    torch.manual_seed(5)
    ckpt = tmp_path / "vit.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), ckpt)
    run_extract(ExtractConfig(model=ModelConfig("ViT-B-32", pretrained=str(ckpt)), layers=["0"], tokens="cls",
                              shards=str(shards), store=str(tmp_path / "s.zarr"), progress=False))
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert ActivationStore.open(tmp_path / "s.zarr").config["pretrained"] == f"file:sha256:{digest}"


def test_threads_sets_torchs_cpu_threads_and_zero_is_refused(shards, tmp_path):
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1  # not the count torch already has
    try:
        extract(shards, tmp_path / "s.zarr", layers=("1",), tokens="cls", threads=want)
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ClipsaeError, match="--threads must be at least 1, not 0"):
        ExtractConfig(ModelConfig("RN50"), ["layer4"], "x", "s.zarr", threads=0)


def test_the_old_name_of_quiet_still_works_and_says_it_was_renamed(shards, tmp_path, run_cli):
    code, out, err = run_cli("extract", "--model", "ViT-B-32", "--layers", "0", "--tokens", "cls", "--shards", shards,
                             "--store", tmp_path / "s.zarr", "--no-progress")
    assert code == 0, err
    assert err.strip().splitlines() == ["warning: extract --no-progress is now --quiet; the old name goes in a later release"]
    assert ActivationStore.open(tmp_path / "s.zarr").n_images > 0
    code, out, _ = run_cli("extract", "--help")
    assert code == 0 and "--no-progress" not in out
