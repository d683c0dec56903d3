"""Fixtures shared by the report's tests: a store made from real tars, encoded, and its report."""

import pytest


@pytest.fixture(scope="module")
def tar_encoded(shards, tmp_path_factory):
    """(store path, SAE folder): a store with one part per synthetic tar (an ``embed`` hook and patch labels),
    encoded by a TopK SAE as codes 'sae' whose latents 0–2 never fire (a large negative encoder bias)."""
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from tests.analysis.helpers import sae_weights, saelens_dir, store_from_tars

    tmp = tmp_path_factory.mktemp("tar_encoded")
    store = store_from_tars(tmp / "s.zarr", sorted(shards.glob("*.tar")), embed_d=6, patch_labels=True)
    w = sae_weights(7)
    w["b_enc"][:3] = -1e3
    sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": 4}, w)
    run_encode(EncodeConfig(store, sae, progress=False))
    return store, sae


@pytest.fixture(scope="module")
def report(tar_encoded):
    """The report of :func:`tar_encoded`'s codes, written to its default folder."""
    from clipsae.analysis.report.build import ReportConfig, run_report
    from clipsae.analysis.report.siblings import report_dir

    store, _ = tar_encoded
    run_report(ReportConfig(store, "sae", k=3, per_interval=2, progress=False))
    return report_dir(store, "sae")
