"""Stores open across formats and implementations: format 1 still reads, and any Zarr v3 reader agrees with ours."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsae.store import ActivationStore, verify, write_store
from clipsae.store.codes import Codes, codes_dir
from clipsae.store.layout import HookLayout
from clipsae.store.status import store_status
from tests.conftest import assert_same_store, tree_snapshot

FIXTURES = Path(__file__).parent / "fixtures"
FORMAT1_LAYOUT = {"resid.1": {"cls_token": True, "grid": [2, 2]}, "layer4": {"cls_token": False, "grid": [2, 2]},
                  "embed": {"cls_token": False, "grid": None}}


@pytest.fixture
def format1(tmp_path):
    path = tmp_path / "format1.zarr"
    shutil.copytree(FIXTURES / "format1.zarr", path)
    return path


def test_format1_store_reads_back_what_was_written(format1):
    expected = np.load(FIXTURES / "format1.expected.npz")
    s = ActivationStore.open(format1)
    assert s.format_version == 1 and s.n_images == 11
    assert list(s.keys()) == list(expected["keys"])
    np.testing.assert_array_equal(s.labels(), expected["labels"])
    for hook in ("resid.1", "layer4", "embed"):
        np.testing.assert_array_equal(s.read(hook, slice(None)), expected[hook])


def test_format1_token_layout_is_derived_from_the_hook_meaning(format1):
    s = ActivationStore.open(format1)
    for hook, want in FORMAT1_LAYOUT.items():
        lay = s.layout(hook)
        assert (lay.cls_token, list(lay.grid) if lay.grid else None) == (want["cls_token"], want["grid"])
    assert list(s.token_indices("resid.1", "patches")) == [1, 2, 3, 4]
    assert list(s.token_indices("layer4", "patches")) == [0, 1, 2, 3]


def test_format1_store_verifies_without_checksums(format1):
    r = verify(ActivationStore.open(format1))
    assert r.ok and r.unchecksummed == ["p0", "p1"]


def test_format1_store_takes_a_format2_part(format1):
    rng = np.random.default_rng(3)
    acts = {"resid.1": rng.standard_normal((2, 5, 8)), "layer4": rng.standard_normal((2, 4, 8)),
            "embed": rng.standard_normal((2, 1, 8))}
    write_store(format1, acts, keys=["new0", "new1"], labels=[5, 6], dtype="float16", part="p2",
                attrs={"model": "fixture", "pretrained": "random-init(seed=0)"},
                layouts={h: {**v, "meaning": ActivationStore.open(format1).layout(h).meaning} for h, v in FORMAT1_LAYOUT.items()})
    s = ActivationStore.open(format1)
    assert s.n_images == 13 and list(s.keys()[-2:]) == ["new0", "new1"]
    np.testing.assert_array_equal(s.read("layer4", [11, 12]), acts["layer4"].astype(np.float16))
    r = verify(s)
    assert r.ok and r.unchecksummed == ["p0", "p1"]


def test_a_patches_only_format1_store_has_no_cls_token():
    # Format 1 wrote "CLS then GxG patches" even for --tokens patches; the store's token mode decides.
    lay = HookLayout.from_json("resid.3", {"n_tokens": 4, "d": 8, "meaning": "CLS then 2x2 patches row-major"}, 1, "patches")
    assert (lay.cls_token, lay.grid) == (False, (2, 2))


def test_tensorstore_reads_every_array_as_we_do(tmp_path):
    ts = pytest.importorskip("tensorstore", reason="tensorstore (a test extra) is not installed")
    rng = np.random.default_rng(0)
    path = tmp_path / "s.zarr"
    for part, n in (("p0", 9), ("p1", 4)):
        write_store(path, {"resid.2": rng.standard_normal((n, 5, 8)), "embed": rng.standard_normal((n, 8))},
                    keys=[f"{part}/ключ-{i}" for i in range(n)], labels=list(range(n)), part=part, dtype="float16",
                    attrs={"model": "m"}, layouts={"resid.2": {"cls_token": True, "grid": [2, 2]}})
    s = ActivationStore.open(path)

    def read(rel):
        return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / rel)}}).result().read().result()

    for p in s.parts:
        rows = slice(p.offset, p.offset + p.n_images)
        for hook in s.hooks:
            np.testing.assert_array_equal(read(f"parts/{p.name}/acts/{hook}"), s.read(hook, rows))
        np.testing.assert_array_equal(read(f"parts/{p.name}/labels"), s.labels()[rows])
        keys = [bytes(r).rstrip(b"\0").decode() for r in read(f"parts/{p.name}/keys")]
        assert keys == list(s.keys()[rows])


@pytest.fixture
def format2(tmp_path):
    """The format-2 fixture (fixtures/README.md): two complete parts with codes, a third left by a killed writer."""
    shutil.copytree(FIXTURES / "format2", tmp_path / "format2")
    return tmp_path / "format2"


def test_format2_store_reads_and_verifies_with_its_codes(format2):
    s = ActivationStore.open(format2 / "store.zarr")
    assert [p.name for p in s.parts] == ["00000", "00001"] and s.incomplete_parts == ["00002"]
    assert s.hooks == ["resid.6", "embed"] and s.n_images == 8
    assert list(s.keys()) == [f"img{i:07d}" for i in range(8)]
    codes = Codes(s, "fx")
    assert codes.d_sae == 16 and sum(len(v.images_I) for v in codes.iter_images()) == 8
    r = verify(s)
    assert r.ok and r.incomplete == ["00002"] and not r.unchecksummed
    states = {p["name"]: p["state"] for p in store_status(format2 / "store.zarr")["parts"]}
    assert states["00000"] == states["00001"] == "complete" and states["00002"] in ("in progress", "interrupted")


def test_format2_store_resumes_extract_then_encode(format2, tmp_path, run_cli):
    store = format2 / "store.zarr"
    before = {p: tree_snapshot(store / "parts" / p) for p in ("00000", "00001")}
    codes_before = tree_snapshot(codes_dir(store, "fx") / "parts")
    extract = ["extract", "--model", "ViT-B-32", "--layers", "6,embed", "--tokens", "cls", "--batch-size", "3",
               "--quiet", "--shards", format2 / "tars"]
    code, out, err = run_cli(*extract, "--store", store)
    assert code == 0, err
    assert "from 1 tars" in out and "skipped 2 finished tars" in out
    assert {p: tree_snapshot(store / "parts" / p) for p in ("00000", "00001")} == before
    code, _, err = run_cli(*extract, "--store", tmp_path / "fresh.zarr")
    assert code == 0, err
    # Parts 00000 and 00001 were extracted on the machine that made the fixture.
    assert_same_store(store, tmp_path / "fresh.zarr", made_elsewhere=True)

    code, out, err = run_cli("encode", "--store", store, "--sae", format2 / "sae", "--name", "fx", "--quiet")
    assert code == 0, err
    assert "1 parts written, 2 already done" in out
    after = tree_snapshot(codes_dir(store, "fx") / "parts")
    assert {k: v for k, v in after.items() if not k.startswith("00002")} == codes_before
    s = ActivationStore.open(store)
    assert verify(s).ok and not s.incomplete_parts and Codes(s, "fx").n_images == 12


def test_registers_are_recorded_and_patches_leave_them_out(tmp_path):
    acts = np.zeros((2, 1 + 4 + 9, 3), np.float32)
    write_store(tmp_path / "s.zarr", {"resid.0": acts}, ["a", "b"], attrs={"model": "m"},
                layouts={"resid.0": {"cls_token": True, "registers": 4, "grid": [3, 3]}})
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert s.format_version == 3 and s.layout("resid.0").registers == 4 and s.layout("resid.0").prefix == 5
    assert list(s.token_indices("resid.0", "patches")) == list(range(5, 14))
    assert list(s.token_indices("resid.0", "cls")) == [0]


def test_a_format2_hook_has_no_registers():
    lay = HookLayout.from_json("resid.0", {"n_tokens": 5, "d": 3, "cls_token": True, "grid": [2, 2]}, 2)
    assert lay.registers == 0 and lay.prefix == 1
