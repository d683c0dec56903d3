import torch

from clipsae.analysis.features import nearest_features as nf


def test_nearest_features_equal_a_full_cosine_matrix_across_blocks(monkeypatch):
    monkeypatch.setattr(nf, "SIMS_PER_BLOCK", 7 * 30)  # blocks of 7 rows
    w = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    got = nf.nearest_features(w, 4)
    cos = torch.nn.functional.normalize(w, dim=1) @ torch.nn.functional.normalize(w, dim=1).T
    cos.fill_diagonal_(-2)
    want = cos.topk(4, dim=1)
    assert torch.equal(got.features_FN, want.indices)
    assert torch.allclose(got.cosine_FN, want.values, atol=1e-6)
