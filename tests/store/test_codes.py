"""The codes cache: read back in blocks of any size, and lost data is an error, never zeros."""

import numpy as np
import pytest

from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore


def _flat(blocks):
    return [np.concatenate([getattr(b, f) for b in blocks]) for f in ("image_of_E", "latents_E", "values_E", "tokens_E")]


@pytest.mark.parametrize("by", ["max", "mean", "cls"])
def test_small_blocks_read_the_same_entries_as_one_block(codes, by):
    whole = _flat(list(codes.iter_images(by)))
    small = _flat(list(codes.iter_images(by, max_entries=7)))
    for a, b in zip(whole, small):
        np.testing.assert_array_equal(a, b)


def test_a_lost_codes_chunk_is_an_error_naming_it(encoded, tmp_path):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(encoded[0], store)
    (store / "codes" / "sae" / "parts" / "part-001" / "image_max" / "c" / "0").unlink()
    c = Codes(ActivationStore.open(store), "sae")
    with pytest.raises(ClipsaeError, match="part-001, image_max: chunk 0 is missing"):
        list(c.iter_images("max"))


def test_verify_names_an_altered_and_a_lost_codes_chunk(encoded, tmp_path):
    import shutil

    from clipsae.store.integrity import verify

    store = tmp_path / "s.zarr"
    shutil.copytree(encoded[0], store)
    assert verify(ActivationStore.open(store)).ok
    part = store / "codes" / "sae" / "parts"
    (part / "part-000" / "token_latents" / "c" / "0" / "0").unlink()
    f = part / "part-002" / "image_sum" / "c" / "0"
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    problems = verify(ActivationStore.open(store)).problems
    assert any("codes sae, part part-000, token_latents: chunk 0 is missing" in p for p in problems)
    assert any("codes sae, part part-002, image_sum: chunk 0 was altered" in p for p in problems)


def test_a_small_part_is_stored_in_chunks_fitted_to_it(encoded):
    # Each 10-image part holds 10 × 5 token rows and at most 10 × 5 × 4 per-image entries: an
    # array's last chunk is stored at full size, so chunks sized for big parts would cost MiB each.
    part = encoded[0] / "codes" / "sae" / "parts" / "part-000"
    files = [f for f in part.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 64 * 1024
    assert (part / "token_values" / "c" / "0" / "0").stat().st_size == 10 * 5 * 4 * 4


def test_an_altered_codes_chunk_is_refused_by_every_read(encoded, tmp_path):
    import shutil

    store = tmp_path / "s.zarr"
    shutil.copytree(encoded[0], store)
    parts = store / "codes" / "sae" / "parts"
    for part, array, chunk in (("part-001", "image_max", "0"), ("part-002", "position_sq_err", "0"),
                               ("part-003", "token_values", "0/0")):
        f = parts / part / array / "c" / chunk
        data = bytearray(f.read_bytes())
        data[5] ^= 0x01
        f.write_bytes(bytes(data))
    c = Codes(ActivationStore.open(store), "sae")
    with pytest.raises(ClipsaeError, match="part-001, image_max: chunk 0 was altered after it was written"):
        list(c.iter_images("max"))
    with pytest.raises(ClipsaeError, match="part-002, position_sq_err: chunk 0 was altered"):
        c.sums()
    with pytest.raises(ClipsaeError, match="part-003, token_values: chunk 0 was altered"):
        c.token_codes(35)
