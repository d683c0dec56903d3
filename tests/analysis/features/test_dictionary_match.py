import csv
import itertools
import json

import numpy as np
import pytest
import torch

from clipsae.analysis.features import dictionary_match as dm
from clipsae.analysis.features.dictionary_match import match_dictionaries
from clipsae.errors import ClipsaeError
from tests.analysis.helpers import sae_weights, saelens_dir
from tests.train.formats.test_clipscope import clipscope_file


def _permuted(w: dict, perm: torch.Tensor) -> dict:
    """The same SAE with its latents reordered: latent j of the copy is latent perm[j] of the original."""
    return {"W_enc": w["W_enc"][:, perm], "b_enc": w["b_enc"][perm], "W_dec": w["W_dec"][perm], "b_dec": w["b_dec"]}


def _csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_a_permuted_copy_is_matched_back_with_cosine_one(run_cli, tmp_path):
    w = sae_weights(2)
    perm = torch.randperm(w["W_dec"].shape[0], generator=torch.Generator().manual_seed(0))
    a = saelens_dir(tmp_path / "a", {"architecture": "topk", "k": 4}, w)
    b = saelens_dir(tmp_path / "b", {"architecture": "topk", "k": 4}, _permuted(w, perm))
    code, out, err = run_cli("sae", "compare", a, b, "--out", tmp_path / "o")
    assert code == 0, err
    rows = _csv(tmp_path / "o" / "sae_compare.csv")
    inverse = torch.argsort(perm).tolist()  # A's latent i sits at B's position inverse[i]
    assert [int(r["matched_b"]) for r in rows] == inverse and [int(r["best_b"]) for r in rows] == inverse
    assert all(float(r["matched_cos"]) == pytest.approx(1.0) for r in rows)
    summary = json.loads((tmp_path / "o" / "sae_compare.json").read_text())
    assert summary["matched_above_0.9"] == 1.0 and summary["best_above_0.9"] == 1.0
    assert "0.9: 100.0%" in out and (tmp_path / "o" / "sae_compare.png").read_bytes()[:4] == b"\x89PNG"


def test_best_and_one_to_one_matches_equal_brute_force():
    g = torch.Generator().manual_seed(3)
    dec_a, dec_b = torch.randn(6, 5, generator=g), torch.randn(7, 5, generator=g)
    cos = torch.nn.functional.normalize(dec_a, dim=1) @ torch.nn.functional.normalize(dec_b, dim=1).T
    m = match_dictionaries(dec_a, dec_b)
    np.testing.assert_array_equal(m.best_b_A, cos.argmax(1).numpy())
    np.testing.assert_allclose(m.best_cos_A, cos.max(1).values.double().numpy(), rtol=1e-6)
    c = cos.double().numpy()
    best = max(itertools.permutations(range(7), 6), key=lambda p: sum(c[i, j] for i, j in enumerate(p)))
    assert m.matched_b_A.tolist() == list(best)
    np.testing.assert_allclose(m.matched_cos_A, c[range(6), list(best)])


def test_fewer_b_features_leave_a_features_unmatched():
    g = torch.Generator().manual_seed(4)
    m = match_dictionaries(torch.randn(5, 3, generator=g), torch.randn(3, 3, generator=g))
    assert (m.matched_b_A >= 0).sum() == 3 and np.isnan(m.matched_cos_A).sum() == 2
    assert sorted(m.matched_b_A[m.matched_b_A >= 0].tolist()) == [0, 1, 2]


def test_best_match_does_not_depend_on_the_block_size(monkeypatch):
    g = torch.Generator().manual_seed(5)
    dec_a, dec_b = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g)
    whole = match_dictionaries(dec_a, dec_b)
    monkeypatch.setattr(dm, "_BLOCK_ELEMENTS", 31)
    cut = match_dictionaries(dec_a, dec_b)
    np.testing.assert_array_equal(cut.best_b_A, whole.best_b_A)
    np.testing.assert_allclose(cut.best_cos_A, whole.best_cos_A, rtol=1e-6)  # BLAS sums blocks its own way


def test_saes_too_large_for_the_matching_get_the_best_match_only(run_cli, tmp_path):
    a = saelens_dir(tmp_path / "a", {"architecture": "standard"}, sae_weights(1))
    b = saelens_dir(tmp_path / "b", {"architecture": "standard"}, sae_weights(2))
    code, out, err = run_cli("sae", "compare", a, b, "--out", tmp_path / "o", "--max-matching", "10")
    assert code == 0, err
    assert "one-to-one matching left out" in out
    rows = _csv(tmp_path / "o" / "sae_compare.csv")
    assert all(r["matched_b"] == "" and r["matched_cos"] == "" and r["best_b"] != "" for r in rows)


def test_ours_against_a_published_sae_of_another_format(run_cli, tmp_path):
    path, state = clipscope_file(tmp_path / "22_resid.pt")
    w = {"W_enc": state["enc"].contiguous(), "b_enc": torch.zeros(state["enc"].shape[1]), "W_dec": (state["dec"] * 2.0).contiguous(),
         "b_dec": state["pre_b"]}
    ours = saelens_dir(tmp_path / "ours", {"architecture": "topk", "k": 4}, w)
    code, out, err = run_cli("sae", "compare", ours, path, "--out", tmp_path / "o")
    assert code == 0, err
    assert "(clipscope)" in out
    rows = _csv(tmp_path / "o" / "sae_compare.csv")
    assert [int(r["matched_b"]) for r in rows] == list(range(len(rows)))  # same directions, other lengths


def test_saes_of_different_widths_are_one_line(run_cli, tmp_path):
    a = saelens_dir(tmp_path / "a", {"architecture": "standard"}, sae_weights(1, d=8))
    b = saelens_dir(tmp_path / "b", {"architecture": "standard"}, sae_weights(1, d=6))
    code, _, err = run_cli("sae", "compare", a, b, "--out", tmp_path / "o")
    assert code == 1 and "read different widths (8 and 6)" in err and len(err.strip().splitlines()) == 1


def test_different_hooks_are_warned_about(tmp_path):
    from clipsae.analysis.commands import run_sae_compare

    a = saelens_dir(tmp_path / "a", {"architecture": "standard", "hook_name": "resid.3"}, sae_weights(1))
    b = saelens_dir(tmp_path / "b", {"architecture": "standard", "hook_name": "resid.5"}, sae_weights(2))
    lines = run_sae_compare(a, b, tmp_path / "o", device="cpu")
    assert any("A was trained on resid.3 and B on resid.5" in line for line in lines)


def test_zero_decoder_rows_match_nothing():
    dec = torch.eye(3)
    dec[1] = 0
    m = match_dictionaries(dec, torch.eye(3))
    assert m.best_cos_A[1] == 0.0 and m.best_cos_A[0] == pytest.approx(1.0)
    with pytest.raises(ClipsaeError):
        match_dictionaries(dec, torch.eye(4))


def test_the_figure_names_each_sae_by_its_run_and_kind_not_its_absolute_path(tmp_path):
    from clipsae.analysis.commands import _sae_label
    from clipsae.train.load import load_sae

    sae = load_sae(saelens_dir(tmp_path / "run" / "topk-x4", {"architecture": "topk", "k": 4}, sae_weights(2)))
    assert _sae_label(sae) == f"run/topk-x4 (topk, {sae.d_sae:,} latents)"
