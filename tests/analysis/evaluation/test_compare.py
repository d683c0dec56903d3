import csv
import json

import numpy as np
import pytest
import torch

from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.analysis.evaluation.compare import layer_of
from clipsae.analysis.features.label_entropy import label_entropy
from clipsae.analysis.features.monosemanticity import monosemanticity
from clipsae.analysis.features.top_images import top_images
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore
from clipsae.store.writer import write_store
from tests.analysis.helpers import GRID, N_TOKENS, D, reference_codes, sae_weights, saelens_dir

LAYERS = (3, 7)
K = 3


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    """A 2-part store with hooks resid.3, resid.7 and embed, each residual hook encoded by its own TopK SAE."""
    tmp = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    store = tmp / "s.zarr"
    layouts = {f"resid.{i}": {"cls_token": True, "grid": list(GRID)} for i in LAYERS} | {"embed": {}}
    for p in range(2):
        acts = {f"resid.{i}": rng.standard_normal((8, N_TOKENS, D)).astype(np.float32) for i in LAYERS}
        acts["embed"] = rng.standard_normal((8, 5)).astype(np.float32)
        write_store(store, acts, [f"k{p}-{i}" for i in range(8)], labels=[i % 3 for i in range(8)],
                    attrs={"model": "m"}, part=f"part-{p}", layouts=layouts)
    weights = {}
    for i in LAYERS:
        weights[i] = sae_weights(i)
        sae = saelens_dir(tmp / f"sae{i}", {"architecture": "topk", "k": K}, weights[i])
        run_encode(EncodeConfig(store, sae, name=f"L{i}", hook=f"resid.{i}", progress=False))
    return store, weights


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_compare_rows_equal_figures_computed_from_the_activations(two_layers, run_cli, tmp_path):
    store, weights = two_layers
    code, out, err = run_cli("analyze", "compare", "--codes", f"{store}:L3", "--codes", f"{store}:L7",
                             "--out", tmp_path)
    assert code == 0, err
    rows = _rows(tmp_path / "compare.csv")
    assert [r["codes"] for r in rows] == ["L3", "L7"] and [r["layer"] for r in rows] == ["3", "7"]
    s = ActivationStore.open(store)
    for r, layer in zip(rows, LAYERS):
        x = torch.from_numpy(s.read(f"resid.{layer}", slice(None)).reshape(-1, D)).double()
        w = {k: v.double() for k, v in weights[layer].items()}
        z = reference_codes({"architecture": "topk", "k": K}, w, x)
        x_hat = z @ w["W_dec"] + w["b_dec"]
        fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert float(r["fvu"]) == pytest.approx(float(fvu), rel=1e-4)
        assert float(r["explained_variance"]) == pytest.approx(1 - float(fvu), rel=1e-4)
        assert float(r["l0"]) == pytest.approx(float((z > 0).sum(1).double().mean()), rel=1e-6)
        fired = (z > 0).any(0).numpy()
        assert float(r["dead_share"]) == pytest.approx(1 - fired.mean())
        codes = Codes(s, f"L{layer}")
        ent = label_entropy(top_images(codes, 20), s.labels(), 10).entropy_F
        assert float(r["median_label_entropy"]) == pytest.approx(float(np.nanmedian(ent)), rel=1e-5)
        assert float(r["median_ms"]) == pytest.approx(float(np.nanmedian(monosemanticity(codes, "embed").ms_F)), rel=1e-5)
        assert r["latents"] == str(codes.d_sae) and r["k"] == str(K) and r["hook"] == f"resid.{layer}"
        assert r["spliced_cosine"] == ""
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "L3" in out and "L7" in out


def test_compare_reads_splice_and_sparse_probe_where_they_ran(two_layers, tmp_path):
    from clipsae.analysis.commands import run_compare

    store, _ = two_layers
    analysis = store / "codes" / "L7-analysis"
    analysis.mkdir(exist_ok=True)
    (analysis / "splice.json").write_text(json.dumps({"cosine_spliced": {"mean": 0.8125}, "summary": "s",
                                                      "zero_shot": {"ce_recovered": 0.75, "kl": 0.5}}))
    (analysis / "sparse_probe.json").write_text(json.dumps({"accuracy": {"1": 0.625, "5": 0.875}, "dense_accuracy": 0.9375}))
    try:
        run_compare([(store, "L3"), (store, "L7")], tmp_path, "max", 10, None, "cpu")
    finally:
        (analysis / "splice.json").unlink()
        (analysis / "sparse_probe.json").unlink()
    rows = _rows(tmp_path / "compare.csv")
    assert [r["spliced_cosine"] for r in rows] == ["", "0.8125"]
    assert [(r["ce_recovered"], r["ce_recovered_mean"], r["kl"]) for r in rows] == [("", "", ""), ("0.75", "", "0.5")]
    # A metric that did not run for a row is empty, never zero.
    assert [(r["sparse_probe_k1"], r["sparse_probe_k2"], r["sparse_probe_k5"], r["dense_probe"]) for r in rows] == \
        [("", "", "", ""), ("0.625", "", "0.875", "0.9375")]


def test_compare_without_embeddings_leaves_ms_empty_and_says_why(codes, tmp_path):
    from clipsae.analysis.commands import run_compare

    lines = run_compare([(codes.store.path, "sae")], tmp_path, "max", 10, None, "cpu")
    assert _rows(tmp_path / "compare.csv")[0]["median_ms"] == ""
    assert any("no monosemanticity for sae" in line for line in lines)


@pytest.mark.parametrize("ref, message", [("nocolon", "--codes must be STORE:CODES"),
                                          ("{store}:missing", "has no codes named 'missing'")])
def test_compare_bad_codes_are_one_line(two_layers, run_cli, tmp_path, ref, message):
    code, _, err = run_cli("analyze", "compare", "--codes", ref.format(store=two_layers[0]), "--out", tmp_path / "o")
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("hook, layer", [("resid.20", 20), ("blocks.0", 0), ("layer4", 4), ("embed", None),
                                         ("ln_post", None)])
def test_layer_is_read_from_the_hook_name(hook, layer):
    assert layer_of(hook) == layer


def test_compare_writes_a_markdown_table_and_prints_aligned_columns(two_layers, tmp_path):
    from clipsae.analysis.commands import run_compare

    store, _ = two_layers
    lines = run_compare([(store, "L3"), (store, "L7")], tmp_path, "max", 10, None, "cpu")
    md = (tmp_path / "compare.md").read_text().splitlines()
    assert md[0].startswith("| codes | hook | sae | latents | k | tokens | l0 | fvu |") and len(md) == 4
    assert md[2].startswith("| L3 | resid.3 | topk (saelens) |") and "|  |" in md[2]  # splice did not run: empty
    table = [line for line in lines if line.startswith(("codes", "L3", "L7"))]
    assert len(table) == 3 and len({len(line) for line in table}) == 1  # every column as wide as its widest
    assert any("rest on 80 encoded tokens, fewer than 10,000" in line for line in lines)


def test_rows_on_one_hook_are_plotted_against_l0_not_a_layer(two_layers):
    from clipsae.analysis.evaluation.compare import _hook_panels, _varies_by_layer, summarise

    store, _ = two_layers
    s = ActivationStore.open(store)
    rows = [summarise(Codes(s, name), "max", 10, None, "cpu") for name in ("L3", "L7")]
    assert _varies_by_layer(rows)
    assert not _varies_by_layer([rows[0], rows[0]]) and len(_hook_panels([rows[0], rows[0]])) == 1
