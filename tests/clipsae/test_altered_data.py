"""Nothing altered after it was written is ever used: train, encode and the analyses stop on it with
the line `store verify` prints, and non-finite values recorded at extraction are refused up front."""

import shutil

import numpy as np
import pytest

from clipsae.store.writer import write_store
from tests.analysis.helpers import make_store, sae_weights, saelens_dir
from tests.conftest import tree_snapshot

ALTERED = "part part-001, hook blocks.0: chunk 0 was altered after it was written (CRC32C differs)"


@pytest.fixture
def altered(tmp_path):
    """A 3-part store whose part-001 activation chunk had one byte changed after it was written."""
    store = make_store(tmp_path / "s.zarr")
    f = store / "parts" / "part-001" / "acts" / "blocks.0" / "c" / "0" / "0" / "0"
    data = bytearray(f.read_bytes())
    data[41] ^= 0x01  # a low mantissa bit: a plausible value, caught only by the checksum
    f.write_bytes(bytes(data))
    return store


def _one_line(code, err, *want):
    """Exit 1 and one error line (after any progress bar) holding each of ``want``."""
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: ") and err.count("error") == 1 and "Traceback" not in err, err
    for w in want:
        assert w in last, err


def test_train_stops_on_an_altered_chunk(altered, tmp_path, run_cli):
    code, _, err = run_cli("train", "--store", altered, "--hook", "blocks.0", "--steps", "5", "--batch-size", "16",
                           "--expansion", "2", "--k", "2", "--out", tmp_path / "run", "--quiet")
    _one_line(code, err, ALTERED, "store verify")
    assert not (tmp_path / "run" / "sae.safetensors").exists()


def test_encode_stops_on_an_altered_chunk_and_writes_no_codes_from_it(altered, tmp_path, run_cli):
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 3}, sae_weights())
    code, _, err = run_cli("encode", "--store", altered, "--sae", sae, "--name", "e")
    _one_line(code, err, ALTERED)
    parts = altered / "codes" / "e" / "parts"
    complete = [p.name for p in parts.iterdir() if p.is_dir() and '"complete": true' in (p / "zarr.json").read_text()]
    assert "part-001" not in complete


def test_analyses_stop_on_an_altered_codes_chunk(encoded, tmp_path, run_cli):
    store = tmp_path / "s.zarr"
    shutil.copytree(encoded[0], store)
    f = store / "codes" / "sae" / "parts" / "part-002" / "position_sq_err" / "c" / "0"
    f.write_bytes(np.float64(float("nan")).tobytes() + f.read_bytes()[8:])
    before = tree_snapshot(store)
    code, _, err = run_cli("analyze", "token-mse", "--store", store, "--codes", "sae", "--out", tmp_path / "a")
    _one_line(code, err, "codes 'sae', part part-002, position_sq_err: chunk 0 was altered", "rerun `clipsae encode`")
    g = store / "codes" / "sae" / "parts" / "part-000" / "image_max" / "c" / "0"
    g.write_bytes(bytes([g.read_bytes()[0] ^ 0x10]) + g.read_bytes()[1:])
    code, _, err = run_cli("analyze", "top-images", "--store", store, "--codes", "sae", "--out", tmp_path / "b")
    _one_line(code, err, "codes 'sae', part part-000, image_max: chunk 0 was altered")
    assert {k: v for k, v in tree_snapshot(store).items() if "image_max" not in k} == \
        {k: v for k, v in before.items() if "image_max" not in k}


def test_non_finite_values_recorded_at_extraction_are_refused_naming_the_part(tmp_path, run_cli):
    acts = np.random.default_rng(0).standard_normal((12, 1, 8)).astype(np.float32)
    path = tmp_path / "inf.zarr"
    write_store(path, {"h": acts[:6]}, [f"a{i}" for i in range(6)], attrs={"model": "m"}, part="p0")
    acts[8, 0, 3] = np.inf
    write_store(path, {"h": acts[6:]}, [f"b{i}" for i in range(6)], attrs={"model": "m"}, part="p1")
    code, _, err = run_cli("train", "--store", path, "--hook", "h", "--steps", "5", "--batch-size", "4",
                           "--out", tmp_path / "run", "--quiet")
    _one_line(code, err, "holds 1 non-finite values", "p1 (images 6-11: 1)", "--dtype float32")
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 3}, sae_weights())
    code, _, err = run_cli("encode", "--store", path, "--sae", sae, "--hook", "h")
    _one_line(code, err, "p1 (images 6-11: 1)")
