"""``clipsae analyze``: the files and columns each command promises, and one-line errors."""

import csv

import numpy as np
import pytest

from clipsae.store.reader import ActivationStore


def _read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_top_images_csv_has_the_promised_columns_and_keys(encoded, tmp_path, run_cli):
    store, _ = encoded
    code, out, err = run_cli("analyze", "top-images", "--store", store, "--codes", "sae", "-k", "3", "--out", tmp_path)
    assert code == 0, err
    rows = _read(tmp_path / "top_images_k3.csv")
    assert list(rows[0]) == ["feature", "rank", "image", "key", "label", "value", "token"]
    s = ActivationStore.open(store)
    for r in rows:
        assert r["key"] == s.keys()[int(r["image"])] and int(r["label"]) == s.labels()[int(r["image"])]
        assert 1 <= int(r["rank"]) <= 3 and float(r["value"]) > 0
    assert "top 3 images by max" in out


def test_top_images_of_chosen_features_are_written_and_printed(encoded, tmp_path, run_cli):
    code, out, err = run_cli("analyze", "top-images", "--store", encoded[0], "--codes", "sae", "-k", "2",
                             "--features", "3,0", "--out", tmp_path)
    assert code == 0, err
    assert {r["feature"] for r in _read(tmp_path / "top_images_features_k2.csv")} <= {"0", "3"}
    assert not (tmp_path / "top_images_k2.csv").exists()
    assert "feature 3: " in out and "feature 0: " in out


def test_density_csv_counts_match_the_codes(encoded, codes, tmp_path, run_cli):
    code, _, err = run_cli("analyze", "density", "--store", encoded[0], "--codes", "sae", "--out", tmp_path)
    assert code == 0, err
    rows = _read(tmp_path / "density.csv")
    sums = codes.sums()
    assert [int(r["tokens_fired"]) for r in rows] == sums.latent_tokens_fired.tolist()
    dens = np.array([float(r["density_tokens"]) for r in rows])
    np.testing.assert_allclose(dens, sums.latent_tokens_fired / (40 * 5), rtol=1e-5)
    assert [r["dead"] == "1" for r in rows] == (sums.latent_tokens_fired == 0).tolist()
    assert [r["dense"] == "1" for r in rows] == (dens > 0.1).tolist()
    for png in ("density_hist.png", "density_scatter.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_token_mse_csv_places_patches_on_the_grid(encoded, tmp_path, run_cli):
    code, _, err = run_cli("analyze", "token-mse", "--store", encoded[0], "--codes", "sae", "--out", tmp_path)
    assert code == 0, err
    rows = _read(tmp_path / "token_mse.csv")
    assert [(r["token"], r["row"], r["col"]) for r in rows] == [("0", "-1", "-1"), ("1", "0", "0"), ("2", "0", "1"),
                                                                 ("3", "1", "0"), ("4", "1", "1")]
    assert (tmp_path / "token_mse.png").is_file()


def test_outputs_of_other_settings_do_not_overwrite_each_other(encoded, tmp_path, run_cli):
    for args in ([], ["--by", "cls"], ["--by", "mean", "-k", "4"]):
        assert run_cli("analyze", "top-images", "--store", encoded[0], "--codes", "sae", "--out", tmp_path, *args)[0] == 0
    assert run_cli("analyze", "density", "--store", encoded[0], "--codes", "sae", "--out", tmp_path, "--by", "cls")[0] == 0
    made = {f.name for f in tmp_path.iterdir()}
    assert {"top_images.csv", "top_images_by-cls.csv", "top_images_by-mean_k4.csv", "density_by-cls.csv",
            "density_hist_by-cls.png", "density_scatter_by-cls.png"} <= made
    assert _read(tmp_path / "top_images.csv") != _read(tmp_path / "top_images_by-cls.csv")


def test_label_entropy_leaves_features_with_few_hits_empty(encoded, tmp_path, run_cli):
    code, _, err = run_cli("analyze", "label-entropy", "--store", encoded[0], "--codes", "sae", "--out", tmp_path,
                           "--min-hits", "1000")
    assert code == 0, err
    rows = _read(tmp_path / "label_entropy.csv")
    assert list(rows[0]) == ["feature", "entropy", "entropy_norm", "n", "top_label", "top_label_share"]
    assert all(r["entropy"] == "" for r in rows)


def test_outputs_default_to_a_folder_beside_the_codes(encoded, run_cli):
    code, out, _ = run_cli("analyze", "top-images", "--store", encoded[0], "--codes", "sae")
    assert code == 0 and (encoded[0] / "codes" / "sae-analysis" / "top_images.csv").is_file()


@pytest.mark.parametrize("args, message", [
    (["top-images", "--codes", "nope"], "has no codes named 'nope'"),
    (["top-images", "--codes", "sae", "-k", "0"], "-k must be at least 1"),
    (["label-entropy", "--codes", "sae", "-k", "-2"], "-k must be at least 1"),
    (["top-images", "--codes", "sae", "--by", "median"], "'median' is not one of"),
    (["label-entropy", "--codes", "sae", "--min-hits", "0"], "--min-hits must be at least 1"),
    (["top-images", "--codes", "sae", "--features", "3,24"], "feature 24 is out of range"),
    (["top-images", "--codes", "sae", "--features", "x"], "--features must be comma-separated"),
])
def test_bad_input_gets_one_line_and_exit_1(encoded, run_cli, args, message):
    code, _, err = run_cli("analyze", args[0], "--store", encoded[0], *args[1:])
    assert code == 1 and message in err and err.count("\n") == 1


def test_codes_missing_a_part_are_refused(tmp_path, run_cli):
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from tests.analysis.helpers import make_store, sae_weights, saelens_dir

    store = make_store(tmp_path / "s.zarr", n_parts=2)
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 2}, sae_weights())
    run_encode(EncodeConfig(store, sae, num_workers=2, worker_index=0, progress=False))
    code, _, err = run_cli("analyze", "density", "--store", store, "--codes", "sae")
    assert code == 1 and "cover 1 of the 2 parts" in err


@pytest.mark.parametrize("quiet", [False, True])
def test_a_pass_over_the_codes_shows_a_bar_of_images_unless_quiet(encoded, tmp_path, run_cli, quiet):
    code, _, err = run_cli("analyze", "top-images", "--store", encoded[0], "--codes", "sae", "--out", tmp_path,
                           *(["--quiet"] if quiet else []))
    assert code == 0, err
    bar = "codes sae: 100%" in err and "40/40" in err and "img/s" in err
    assert bar is not quiet
