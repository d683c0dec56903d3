"""The one module that knows Zarr: fast paths chosen from on-disk metadata, equal to zarr's own paths."""

import json
import shutil

import numpy as np
import pytest
import zarr
import zarr.codecs

from clipsae.store import ActivationStore, verify, write_store
from clipsae.store import zarr_backend as zb


def _store(tmp_path, n=11, t=3, d=4, seed=0):
    acts = np.random.default_rng(seed).standard_normal((n, t, d)).astype(np.float16)
    write_store(tmp_path / "s.zarr", {"h": acts}, keys=[f"k{i}" for i in range(n)], labels=list(range(n)),
                attrs={"model": "m"})
    return tmp_path / "s.zarr", acts


def _rewrite_with_zarr(array_dir, **create_kwargs):
    """Replace an array by one zarr-python writes itself with other codecs or key encodings."""
    values = zarr.open_array(str(array_dir), mode="r")[...]
    rows = json.loads((array_dir / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][0]
    shutil.rmtree(array_dir)
    arr = zarr.create_array(str(array_dir), shape=values.shape, chunks=(rows, *values.shape[1:]), dtype=values.dtype,
                            fill_value=0, **create_kwargs)
    arr[...] = values


def test_store_written_by_clipsae_takes_the_fast_path(tmp_path):
    path, _ = _store(tmp_path)
    part = path / "parts" / "part-00000"
    for name in ("acts/h", "labels", "keys"):
        arr = zb.Array(part / name)
        assert arr.raw is not None, name
        assert arr.chunk_file(0).is_file()


def test_fast_and_zarr_paths_write_identical_chunk_bytes(tmp_path):
    values = np.random.default_rng(1).standard_normal((10, 3, 5)).astype(np.float16)
    ours = zb.create_array(tmp_path / "ours", (0, 3, 5), (4, 3, 5), "float16")
    for i in range(3):
        ours.write_chunk(i, values[4 * i : 4 * i + 4])
    ours.set_length(10)
    theirs = zarr.create_array(str(tmp_path / "theirs"), shape=(10, 3, 5), chunks=(4, 3, 5), dtype="float16",
                               fill_value=0, compressors=None)
    theirs[...] = values
    for i in range(3):
        key = f"c/{i}/0/0"
        assert (tmp_path / "ours" / key).read_bytes() == (tmp_path / "theirs" / key).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "ours"), mode="r")[...], values)


def test_fast_and_zarr_paths_read_identical_values(tmp_path):
    path, acts = _store(tmp_path, n=37)
    arr = zb.Array(path / "parts" / "part-00000" / "acts" / "h")
    assert arr.raw is not None
    by_zarr = zarr.open_array(str(arr.path), mode="r")
    for i in range(arr.n_chunks):
        np.testing.assert_array_equal(arr.read_chunk(i), by_zarr[i * arr.rows_per_chunk : (i + 1) * arr.rows_per_chunk])
    np.testing.assert_array_equal(ActivationStore.open(path).read("h", slice(None)), acts)


@pytest.mark.parametrize("kwargs, fast", [
    ({"compressors": [zarr.codecs.ZstdCodec(level=3)]}, False),
    ({"compressors": None, "serializer": zarr.codecs.BytesCodec(endian="big")}, False),
    ({"compressors": None, "chunk_key_encoding": {"name": "v2", "separator": "."}}, True),
    ({"compressors": None, "chunk_key_encoding": {"name": "default", "separator": "."}}, True),
])
def test_arrays_zarr_wrote_otherwise_read_correctly(tmp_path, kwargs, fast):
    path, acts = _store(tmp_path, n=23)
    array_dir = path / "parts" / "part-00000" / "acts" / "h"
    _rewrite_with_zarr(array_dir, **kwargs)
    assert (zb.Array(array_dir).raw is not None) == fast
    s = ActivationStore.open(path)
    np.testing.assert_array_equal(s.read("h", slice(None)), acts)
    np.testing.assert_array_equal(s.read("h", [22, 0, 9]), acts[[22, 0, 9]])
    assert verify(s).ok


def test_unknown_metadata_falls_back_to_zarr(tmp_path):
    meta = {"zarr_format": 3, "node_type": "array", "data_type": "float16", "storage_transformers": [],
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 3]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}
    assert zb.raw_chunks(meta) is not None
    for change in ({"codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]},
                   {"chunk_grid": {"name": "rectilinear"}},
                   {"chunk_key_encoding": {"name": "future-encoding"}},
                   {"data_type": "string"},
                   {"data_type": {"name": "numpy.datetime64", "configuration": {"unit": "s"}}},
                   {"storage_transformers": [{"name": "something"}]}):
        assert zb.raw_chunks({**meta, **change}) is None, change


def test_keys_are_stored_in_a_core_specification_type(tmp_path):
    keys = ["a", "é/ü", "", "x" * 40]
    zb.write_text(tmp_path / "keys", keys)
    meta = json.loads((tmp_path / "keys" / "zarr.json").read_text())
    assert meta["data_type"] == "uint8" and meta["shape"] == [4, 40]
    assert list(zb.read_text(tmp_path / "keys")) == keys


def test_an_array_of_an_extension_type_opens_through_zarr(tmp_path):
    values = np.array(["2026-01-01", "2026-11-22"], dtype="datetime64[s]")
    zarr.create_array(str(tmp_path / "t"), shape=(2,), chunks=(2,), dtype=values.dtype)[...] = values
    arr = zb.Array(tmp_path / "t")
    assert arr.raw is None and arr.dtype is None
    np.testing.assert_array_equal(arr.read_rows(0, 2), values)
