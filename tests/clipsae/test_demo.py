import pytest

from clipsae.train import load_sae

pytestmark = pytest.mark.long_file


def test_demo_writes_shards_extracts_trains_encodes_and_analyses(tmp_path, run_cli):
    code, out, err = run_cli("demo", "--out", tmp_path / "demo", "--n-images", "12", "--train-steps", "5")
    assert code == 0, err
    assert "wrote 12 synthetic images" in out
    assert "images     12  (12 labelled" in out
    assert "resid.10     (12, 50, 768)" in out
    assert "architecture: topk" in out
    sae = load_sae(tmp_path / "demo" / "runs" / "topk-resid.10")
    assert (sae.d_in, sae.d_sae, sae.k) == (768, 768, 16)
    analysis = tmp_path / "demo" / "acts.zarr" / "codes" / "topk-resid.10-analysis"
    for name in ("top_images.csv", "label_entropy.csv", "density.csv", "token_mse.csv", "density_hist.png",
                 "density_scatter.png", "token_mse.png", "neuron_alignment.csv", "neuron_alignment.png",
                 "correlate-topk-resid.6/best_matches.csv", "correlate-topk-resid.6/matching.csv", "names.csv",
                 "splice.json", "report/index.html", "report/data/index.js", "monosemanticity.csv",
                 "token_mse_series.csv", "token_mse_series.png", "probe.csv", "probe_top.csv",
                 "search/features/search.csv", "search/key/search.csv", "search/text/search.csv",
                 "intervene/intervene.csv", "intervene/intervene_summary.json", "patch_probe.csv",
                 "patch_probe_classes.csv", "patch_probe.json", "absorption.csv", "absorption.json"):
        assert (analysis / name).stat().st_size > 0, name
    snapshots = sorted(int(p.name) for p in (tmp_path / "demo" / "runs" / "topk-resid.10" / "snapshots").iterdir())
    assert snapshots == [1024, 2048, 2560]  # 5 steps of 512: the first to pass each third of 2,560 tokens
    compare = (tmp_path / "demo" / "compare" / "compare.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in compare[1:]] == ["topk-resid.6", "topk-resid.10"]
    assert len((tmp_path / "demo" / "sae-compare" / "sae_compare.csv").read_text().splitlines()) == 768 + 1
    assert "encoded 12 images" in out and str(analysis) in out
    assert out.rstrip().splitlines()[-1].strip() == str(analysis / "report" / "index.html")
    assert f"serve --store {tmp_path / 'demo' / 'acts.zarr'} --codes topk-resid.10 --codes topk-resid.6" in out
    assert "zero-shot over 12 labelled images" in out
    baselines = (tmp_path / "demo" / "baselines-compare" / "compare.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in baselines[1:]] == [
        "topk-resid.10+topk-resid.10-seed1", "pca-k16-resid.10", "kmeans-x1-resid.10", "nmf-n64-resid.10",
        "random-x1-k16-resid.10", "jumprelu-x1-c1-resid.10", "gated-x1-l1_5-resid.10", "archetypal-x1-k16-resid.10",
        "mp-x1-k16-resid.10"]
    assert (tmp_path / "demo" / "baselines-compare" / "compare.html").stat().st_size > 0
    universal = (tmp_path / "demo" / "universal" / "universal.csv").read_text().splitlines()
    assert len(universal) == 768 + 1 and universal[0].startswith("latent,universality,live")
    assert (tmp_path / "demo" / "universal" / "universal.png").stat().st_size > 0
    header = baselines[0].split(",")
    patch_map = [line.split(",")[header.index("patch_map")] for line in baselines[1:]]
    assert all(0 <= float(v) <= 1 for v in patch_map), patch_map
    # Splice ran before the comparisons: every row has its CE recovered, the baselines' too. (Sparse probing, which
    # ran before them as well, leaves out a demo of 12 images: too few per class to split.)
    for table in (baselines, compare):
        col = table[0].split(",").index("ce_recovered")
        assert all(line.split(",")[col] != "" for line in table[1:]), table
