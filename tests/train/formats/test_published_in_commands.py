"""Published SAEs go through the commands as clipsae's own do: sae info, encode, analyze top-images, and the
SAE found again by the analyses that reload it."""

import csv

import pytest

from tests.analysis.helpers import make_store
from tests.train.formats import test_clipscope as clipscope
from tests.train.formats import test_dictionary_learning as dl
from tests.train.formats import test_msae as msae
from tests.train.formats import test_prisma as prisma
from tests.train.formats import test_saev as saev


def _clipscope(tmp_path):
    return clipscope.clipscope_file(tmp_path / "22_resid.pt")[0], clipscope.D, "clipscope"


def _dictionary_learning(tmp_path):
    return dl.folder(tmp_path / "trainer_0", "AutoEncoderTopK", dl.state_dict("AutoEncoderTopK")), dl.D, \
        "dictionary_learning"


def _prisma(tmp_path):
    return prisma.prisma_folder(tmp_path / "prisma", "topk", "layer_norm")[0], prisma.D, "prisma"


def _msae(tmp_path):
    return msae.msae_file(tmp_path)[0], msae.D, "msae"


def _saev(tmp_path):
    header = saev.current_header("TopK", top_k=saev.K)
    return saev.saev_file(tmp_path / "sae.pt", header)[0], saev.D, "saev"


@pytest.mark.parametrize("make", [_clipscope, _dictionary_learning, _prisma, _msae, _saev])
def test_info_encode_and_top_images_run_on_a_published_sae(tmp_path, run_cli, make):
    sae, d, fmt = make(tmp_path)
    code, out, err = run_cli("sae", "info", sae)
    assert code == 0 and f"format: {fmt}" in out, err
    store = make_store(tmp_path / "s.zarr", n_parts=2, per_part=6, d=d)
    code, out, err = run_cli("encode", "--store", store, "--sae", sae, "--hook", "blocks.0", "--name", "pub", "--quiet")
    assert code == 0 and "encoded 12 images" in out, err
    code, _, err = run_cli("analyze", "top-images", "--store", store, "--codes", "pub", "-k", "3", "--out", tmp_path / "a")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "a" / "top_images_k3.csv")))
    assert rows and all(float(r["value"]) > 0 for r in rows)
    code, _, err = run_cli("analyze", "token-mse", "--store", store, "--codes", "pub", "--out", tmp_path / "a")
    assert code == 0, err


def test_sae_info_says_the_hook_and_normalisation_each_format_records(tmp_path, run_cli):
    path, *_ = _prisma(tmp_path)
    code, out, _ = run_cli("sae", "info", path)
    assert code == 0 and "hook: resid.3" in out and "input_norm: layer_norm" in out
    code, out, _ = run_cli("sae", "info", _clipscope(tmp_path)[0])
    assert code == 0 and f"hook: not recorded by its files; encode takes the store's only hook of width {clipscope.D}" in out
    code, out, _ = run_cli("sae", "info", _msae(tmp_path)[0])
    assert code == 0 and "input_norm: affine" in out and "soft_cap: 8" in out


def test_a_named_format_that_does_not_fit_gets_one_line(tmp_path, run_cli):
    sae, d, _ = _clipscope(tmp_path)
    store = make_store(tmp_path / "s.zarr", n_parts=1, per_part=3, d=d)
    code, _, err = run_cli("encode", "--store", store, "--sae", sae, "--sae-format", "dictionary_learning")
    assert code == 1 and "config.json is missing" in err and len(err.strip().splitlines()) == 1


def test_sae_info_shows_a_per_latent_thresholds_range_and_median(tmp_path, run_cli):
    w = dl.state_dict("JumpReluAutoEncoder")  # thresholds 0.0 … 0.4, one per latent
    path = dl.folder(tmp_path / "jump", "JumpReluAutoEncoder", w)
    code, out, _ = run_cli("sae", "info", path)
    median = float(w["threshold"].median())
    assert code == 0 and f"threshold: per latent, from 0 to 0.4, median {median:.4g}" in out
    code, out, _ = run_cli("sae", "info", dl.folder(tmp_path / "batch", "BatchTopKSAE", dl.state_dict("BatchTopKSAE")))
    assert code == 0 and "threshold: 0.15 (every latent)" in out
