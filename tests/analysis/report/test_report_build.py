import base64
import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from clipsae.analysis.commands import run_correlate
from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.analysis.features.top_images import top_images
from clipsae.analysis.report.build import ReportConfig, run_report
from clipsae.analysis.report.siblings import report_dir
from clipsae.errors import ClipsaeError
from clipsae.pipeline.synthetic import CLASSES
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore
from tests.analysis.helpers import sae_weights, saelens_dir


def records(report):
    return {int(p.stem): json.loads(p.read_text()) for p in (report / "features").glob("*.json")}


def test_report_has_one_page_and_one_json_per_live_feature(report, tar_encoded):
    codes = Codes(ActivationStore.open(tar_encoded[0]), "sae")
    live = set(np.nonzero(codes.sums().latent_tokens_fired > 0)[0].tolist())
    assert set(records(report)) == live and not live & {0, 1, 2}
    assert {int(p.stem) for p in (report / "features").glob("*.html")} == live
    assert (report / "index.html").is_file() and (report / "data" / "index.js").is_file()
    index = json.loads((report / "data" / "index.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    assert sorted(index["table"]["feature"]) == sorted(live)


def test_pages_show_each_features_top_images_in_order(report, tar_encoded):
    store = ActivationStore.open(tar_encoded[0])
    top = top_images(Codes(store, "sae"), 3)
    for f, rec in records(report).items():
        want = [int(i) for i in top.images_FK[f] if i >= 0]
        assert [x["image"] for x in rec["top"]] == want
        assert [x["key"] for x in rec["top"]] == [str(store.keys()[i]) for i in want]
        assert np.allclose([x["value"] for x in rec["top"]], top.values_FK[f][:len(want)], rtol=1e-3)


def test_each_shown_image_has_one_thumbnail_no_larger_than_asked(report):
    shown = {x["image"] for rec in records(report).values()
             for x in rec["top"] + [y for iv in rec["intervals"] for y in iv["images"]]}
    assert {int(p.stem) for p in (report / "images").glob("*.jpg")} == shown
    for p in (report / "images").glob("*.jpg"):
        with Image.open(p) as im:
            assert im.format == "JPEG" and max(im.size) <= 160


def test_pages_carry_patch_maps_labels_names_and_neighbours(report):
    for rec in records(report).values():
        assert rec["grid"] == [2, 2]
        assert all(len(x["map"]) == 8 for x in rec["top"])  # 4 bytes of base64 per 3 bytes: 2×2 → 8 chars
        assert {x["label_name"] for x in rec["top"]} <= set(CLASSES)
        assert len(rec["nearest"]) == 8 and all(-1 <= n["cosine"] <= 1 for n in rec["nearest"])


def test_rerun_replaces_the_report_and_leaves_no_partial_folder(report, tar_encoded):
    run_report(ReportConfig(tar_encoded[0], "sae", k=3, per_interval=2, progress=False))
    assert not report.with_name(report.name + ".partial").exists()
    assert not report.with_name(report.name + ".old").exists()
    assert (report / "report.json").is_file()


def test_a_folder_that_is_not_a_report_is_refused_and_left_alone(tar_encoded, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(ClipsaeError, match="not a clipsae report"):
        run_report(ReportConfig(tar_encoded[0], "sae", out=out, progress=False))
    assert (out / "notes.txt").read_text() == "keep"


def test_missing_tars_are_one_line_error_and_shards_finds_moved_ones(tar_encoded, shards, tmp_path):
    with pytest.raises(ClipsaeError, match="pass --shards"):
        run_report(ReportConfig(tar_encoded[0], "sae", out=tmp_path / "r", shards=tmp_path / "nowhere", progress=False))
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()
    moved = tmp_path / "moved"
    shutil.copytree(shards, moved)
    run_report(ReportConfig(tar_encoded[0], "sae", out=tmp_path / "r", shards=moved, progress=False))
    assert len(list((tmp_path / "r" / "images").glob("*.jpg"))) > 0


def test_report_links_each_feature_to_its_correlate_match(tar_encoded, tmp_path):
    store, _ = tar_encoded
    other = saelens_dir(tmp_path / "other", {"architecture": "topk", "k": 4}, sae_weights(8))
    run_encode(EncodeConfig(store, other, progress=False))
    run_correlate((store, "sae"), (store, "other"), None, 3, "max")
    out = tmp_path / "r"
    run_report(ReportConfig(store, "sae", out=out, k=3, per_interval=1, progress=False))
    matched = [r for r in records(out).values() if r["matches"]]
    assert matched
    for rec in matched:
        m = rec["matches"][0]
        target = (out / "features" / m["href"]).resolve()
        assert target == (report_dir(store, "other") / "features" / f"{m['feature']}.html").resolve()


def test_report_cli_prints_where_the_index_is(tar_encoded, tmp_path, run_cli):
    code, out, _ = run_cli("analyze", "report", "--store", tar_encoded[0], "--codes", "sae", "--out", tmp_path / "r",
                           "-k", "2", "--quiet")
    assert code == 0 and f"wrote {tmp_path / 'r' / 'index.html'}" in out


@pytest.mark.parametrize("args, message", [
    (["-k", "0"], "-k must be at least 1"),
    (["--thumb-size", "8"], "--thumb-size must be between"),
    (["--per-interval", "-1"], "--per-interval must be at least 0"),
    (["--embed-hook", "resid.9"], "has no hook 'resid.9'"),
])
def test_report_cli_bad_input_is_one_line(tar_encoded, tmp_path, run_cli, args, message):
    code, _, err = run_cli("analyze", "report", "--store", tar_encoded[0], "--codes", "sae", "--out", tmp_path / "r", *args)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_pages_and_table_show_each_features_monosemanticity(report, tar_encoded):
    from clipsae.analysis.features.monosemanticity import monosemanticity

    ms = monosemanticity(Codes(ActivationStore.open(tar_encoded[0]), "sae"), "embed")
    recs = records(report)
    for f, rec in recs.items():
        assert (rec["ms"] is None) == bool(np.isnan(ms.ms_F[f]))
        if rec["ms"] is not None:
            assert rec["ms"] == pytest.approx(ms.ms_F[f], rel=1e-3)
    index = json.loads((report / "data" / "index.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    assert len(index["table"]["ms"]) == len(recs)
    assert any(row[0] == "monosemanticity" and "embedded by embed" in row[1] for row in index["summary"])


def test_cls_codes_make_pages_without_patch_maps(tar_encoded, tmp_path):
    store, sae = tar_encoded
    run_encode(EncodeConfig(store, sae, name="cls", tokens="cls", progress=False))
    run_report(ReportConfig(store, "cls", out=tmp_path / "r", k=2, per_interval=1, progress=False))
    recs = records(tmp_path / "r")
    assert recs and all(r["grid"] is None and all(x["map"] is None for x in r["top"]) for r in recs.values())


def test_index_shows_the_splice_line_and_pages_the_names_left_beside_the_codes(tar_encoded, tmp_path):
    store, _ = tar_encoded
    analysis = store / "codes" / "sae-analysis"
    (analysis / "splice.json").write_text(json.dumps({"summary": "cos(original, spliced) 0.9876 mean"}))
    (analysis / "names.csv").write_text("feature,rank,word,score,method\n5,1,tench,0.31,decoder\n5,2,goldfish,0.2,decoder\n")
    (analysis / "probe.csv").write_text(
        "attribute,feature,auroc,f1,threshold,positives,images,pearson,spearman\n"
        "red,5,0.55,0.4,1.0,6,18,,\nround,5,0.1,0.2,0.5,6,18,,\nsize,5,,,,,18,0.3,-0.62\nblue,5,0.6,0.3,1,6,18,,\n")
    try:
        run_report(ReportConfig(store, "sae", out=tmp_path / "r", k=2, per_interval=1, progress=False))
    finally:
        for name in ("splice.json", "names.csv", "probe.csv"):
            (analysis / name).unlink()
    index = json.loads((tmp_path / "r" / "data" / "index.js").read_text().split("=", 1)[1].rstrip().rstrip(";"))
    assert ["spliced", "cos(original, spliced) 0.9876 mean"] in index["summary"]
    table = index["table"]
    assert table["name"][table["feature"].index(5)] == "tench"
    assert [n["word"] for n in records(tmp_path / "r")[5]["names"]] == ["tench", "goldfish"]
    # The attributes feature 5 predicts best, by |AUROC − ½| or |Spearman|: round (0.4), size (0.62), blue (0.1).
    assert [(a["attribute"], a["statistic"]) for a in records(tmp_path / "r")[5]["attributes"]] == [
        ("size", "Spearman"), ("round", "AUROC"), ("blue", "AUROC")]


def test_pages_show_the_classes_a_feature_segments_best_with_the_class_over_its_top_image(tar_encoded, tmp_path):
    from clipsae.analysis.commands import Target
    from clipsae.analysis.evaluation.patch_probe import run_patch_probe
    from clipsae.store.reader import ActivationStore

    store, _ = tar_encoded
    run_patch_probe(Target.open(store, "sae", tmp_path / "analysis", progress=False))
    analysis = store / "codes" / "sae-analysis"
    shutil.copy(tmp_path / "analysis" / "patch_probe.csv", analysis / "patch_probe.csv")
    try:
        run_report(ReportConfig(store, "sae", out=tmp_path / "r", k=2, per_interval=1, progress=False))
    finally:
        (analysis / "patch_probe.csv").unlink()
    with open(tmp_path / "analysis" / "patch_probe.csv", newline="") as fh:
        pairs = [r for r in csv.DictReader(fh) if r["feature"] == "5"]
    best = sorted(pairs, key=lambda r: -float(r["ap"]))[:3]
    rec = records(tmp_path / "r")[5]
    assert [s["class"] for s in rec["segments"]] == [r["class"] for r in best]
    # The class map marks exactly the top image's patches whose stored label is that class.
    s = ActivationStore.open(store)
    index = {v: k for k, v in s.mask_classes().items()}[rec["segment_map"]["class"]]
    cells = np.frombuffer(base64.b64decode(rec["segment_map"]["class_map"]), np.uint8)
    labels = s.patch_labels("blocks.0")[0][rec["segment_map"]["image"]]
    assert rec["segment_map"]["image"] == rec["top"][0]["image"]
    np.testing.assert_array_equal(cells, np.where(labels == index, 255, 0))
