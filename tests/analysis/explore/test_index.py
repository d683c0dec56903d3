"""The explorer's index: equal to the report's statistics, reused while the codes are unchanged, rebuilt when
they change, and resumed where an interrupted build stopped."""

import numpy as np
import pytest

from clipsae.analysis.explore import index as ix
from clipsae.analysis.features.interval_samples import interval_samples
from clipsae.analysis.features.top_images import top_images
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore


@pytest.fixture
def fresh(encoded, tmp_path):
    """The shared 4-part token store's codes, with the index written under tmp_path."""
    codes = Codes(ActivationStore.open(encoded[0]), "sae")
    return codes


def _index_at(monkeypatch, folder):
    monkeypatch.setattr(ix, "index_dir", lambda codes: folder)


def test_index_equals_the_reports_top_images_and_interval_samples(fresh, tmp_path, monkeypatch):
    _index_at(monkeypatch, tmp_path / "i")
    got = ix.ensure_index(fresh, progress=False)
    top = top_images(fresh, ix.TOP_K)
    np.testing.assert_array_equal(got.top.images_FK, top.images_FK)
    np.testing.assert_array_equal(got.top.values_FK, top.values_FK)
    samples = interval_samples(fresh, top.first(ix.TOP_SHOWN), ix.PER_INTERVAL)
    np.testing.assert_array_equal(got.samples.images_FQS, samples.images_FQS)
    np.testing.assert_array_equal(got.samples.values_FQS, samples.values_FQS)
    assert got.meta["fingerprint"] == fresh.fingerprint()


def test_iter_part_images_over_every_part_is_iter_images(fresh):
    whole = list(fresh.iter_images())
    parts = [b for i in range(len(fresh.store.parts)) for b in fresh.iter_part_images(i)]
    assert len(whole) == len(parts)
    for a, b in zip(whole, parts):
        np.testing.assert_array_equal(a.latents_E, b.latents_E)
        np.testing.assert_array_equal(a.image_of_E, b.image_of_E)


def test_a_complete_index_is_reused_without_a_pass(fresh, tmp_path, monkeypatch):
    _index_at(monkeypatch, tmp_path / "i")
    ix.ensure_index(fresh, progress=False)

    def no_pass(*a, **k):
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(Codes, "iter_part_images", no_pass)
    assert ix.ensure_index(fresh, progress=False).meta["n_features"] == fresh.d_sae


def test_an_index_of_other_codes_is_rebuilt(fresh, tmp_path, monkeypatch):
    folder = tmp_path / "i"
    _index_at(monkeypatch, folder)
    ix.ensure_index(fresh, progress=False)
    monkeypatch.setattr(Codes, "fingerprint", lambda self: "0" * 64)  # as if the codes were encoded again
    rebuilt = ix.ensure_index(fresh, progress=False)
    assert rebuilt.meta["fingerprint"] == "0" * 64


def test_an_interrupted_build_resumes_where_it_stopped_with_the_same_index(fresh, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    _index_at(monkeypatch, whole)
    reference = ix.ensure_index(fresh, progress=False)

    folder = tmp_path / "killed"
    _index_at(monkeypatch, folder)
    monkeypatch.setattr(ix, "SAVE_EVERY_S", 0.0)
    read = []
    original = Codes.iter_part_images

    def dies_in_part(die_at):
        def iterate(self, i, *a, **k):
            if len(read) == die_at:
                raise KeyboardInterrupt  # a kill after `die_at` parts were read
            read.append(i)
            yield from original(self, i, *a, **k)
        return iterate

    # Killed in the first pass after two parts, then in the second pass after one part.
    monkeypatch.setattr(Codes, "iter_part_images", dies_in_part(2))
    with pytest.raises(KeyboardInterrupt):
        ix.ensure_index(fresh, progress=False)
    assert not (folder / "index.json").exists()
    read.clear()
    monkeypatch.setattr(Codes, "iter_part_images", dies_in_part(3))
    with pytest.raises(KeyboardInterrupt):
        ix.ensure_index(fresh, progress=False)
    assert read == [2, 3, 0], "the first pass resumed at part 2, then the second pass began"
    read.clear()
    monkeypatch.setattr(Codes, "iter_part_images", dies_in_part(99))
    got = ix.ensure_index(fresh, progress=False)
    assert read[0] == 1, "the second pass resumed after the part it had saved"
    for name in ("images_FK", "values_FK", "tokens_FK"):
        np.testing.assert_array_equal(getattr(got.top, name), getattr(reference.top, name))
    for name in ("images_FQS", "values_FQS", "tokens_FQS"):
        np.testing.assert_array_equal(getattr(got.samples, name), getattr(reference.samples, name))
    for name, arr in reference.stats.items():
        np.testing.assert_array_equal(got.stats[name], arr)
