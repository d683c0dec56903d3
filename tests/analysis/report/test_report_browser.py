"""The report in a real browser: headless Chromium driven by selenium through Debian's chromedriver."""

import base64
import json
import shutil

import pytest

from tests.browser import chromium, needs_chromium

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def open_page(browser, path):
    browser.get(path.as_uri())
    browser.get_log("browser")  # drain: what follows are this page's messages only
    browser.refresh()
    return [m for m in browser.get_log("browser") if m["level"] == "SEVERE"]


def live_features(report):
    return sorted(int(p.stem) for p in (report / "features").glob("*.html"))


def wait_for_images(browser):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))
    return browser.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")


def test_index_loads_without_console_errors_and_lists_the_live_features(browser, report):
    assert open_page(browser, report / "index.html") == []
    rows = browser.execute_script("return document.querySelectorAll('#feature-table tbody tr').length")
    assert rows == min(50, len(live_features(report)))
    assert browser.execute_script("return document.getElementById('density-scatter').width") > 0
    headers = browser.execute_script("return Array.from(document.querySelectorAll('#feature-table th')).map(t => t.textContent)")
    assert "monosemanticity" in headers


@pytest.mark.parametrize("which", [0, -1])
def test_feature_pages_load_without_errors_and_every_thumbnail_decodes(browser, report, which):
    f = live_features(report)[which]
    assert open_page(browser, report / "features" / f"{f}.html") == []
    images = wait_for_images(browser)
    rec = json.loads((report / "features" / f"{f}.json").read_text())
    assert len(images) == len(rec["top"]) + sum(len(iv["images"]) for iv in rec["intervals"])
    assert all(width > 0 for _, width in images), images
    # A map with no patch firing (the CLS token's value) is not drawn over its thumbnail, which it would darken.
    cards = rec["top"] + [x for iv in rec["intervals"] for x in iv["images"]]
    fired = sum(any(base64.b64decode(x["map"])) for x in cards)
    assert browser.execute_script("return document.querySelectorAll('.thumb canvas').length") == fired
    assert browser.execute_script("return document.querySelectorAll('.thumb .nopatch').length") == len(cards) - fired
    stats = dict(browser.execute_script(
        "return Array.from(document.querySelectorAll('table.stats tr')).map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
    assert stats["monosemanticity"] == ("– (fires on one image)" if rec["ms"] is None else str(rec["ms"]))


def test_jump_to_feature_opens_its_page_and_explains_a_dead_one(browser, report):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    live = live_features(report)
    open_page(browser, report / "index.html")
    box = browser.find_element(By.ID, "jump-input")
    box.send_keys("1", Keys.ENTER)  # the fixture's latents 0–2 never fire
    assert "never fired" in browser.find_element(By.ID, "jump-message").text
    box.clear()
    box.send_keys("24", Keys.ENTER)
    assert "there are 24" in browser.find_element(By.ID, "jump-message").text
    box.clear()
    box.send_keys(str(live[-1]), Keys.ENTER)
    assert browser.current_url.endswith(f"/features/{live[-1]}.html")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"Feature {live[-1]}")


def test_sorting_the_table_by_density_puts_the_densest_feature_first(browser, report):
    from selenium.webdriver.common.by import By

    open_page(browser, report / "index.html")
    browser.find_element(By.XPATH, "//th[text()='image density']").click()
    first = int(browser.find_element(By.CSS_SELECTOR, "#feature-table tbody tr td a").text)
    recs = {f: json.loads((report / "features" / f"{f}.json").read_text()) for f in live_features(report)}
    top = max(r["density_images"] for r in recs.values())
    assert recs[first]["density_images"] == top


def test_a_random_weights_store_keeps_names_out_of_titles_and_says_why(browser, report, tar_encoded, tmp_path):
    from clipsae.analysis.report.build import ReportConfig, run_report
    from clipsae.analysis.report.siblings import report_dir
    from clipsae.store import zarr_backend as zb

    f = live_features(report)[0]
    open_page(browser, report / "features" / f"{f}.html")
    assert browser.execute_script("return document.getElementById('random-weights')") is None

    store = tmp_path / "s.zarr"
    shutil.copytree(tar_encoded[0], store)
    attrs = zb.read_attributes(store)
    attrs["clipsae"]["config"]["pretrained"] = "random-init(seed=0)"  # as extract records a model it did not load
    zb.update_attributes(store, attrs)
    analysis = store / "codes" / "sae-analysis"
    analysis.mkdir(exist_ok=True)
    (analysis / "names.csv").write_text(f"feature,rank,word,score,method\n{f},1,tench,0.31,decoder\n")
    run_report(ReportConfig(store, "sae", k=3, per_interval=2, progress=False))
    random_report = report_dir(store, "sae")
    assert open_page(browser, random_report / "features" / f"{f}.html") == []
    assert browser.find_element("tag name", "h1").text == f"Feature {f}"
    assert "random weights" in browser.find_element("id", "random-weights").text
    assert "tench" in browser.find_element("tag name", "main").text  # still listed, below the warning
    open_page(browser, random_report / "index.html")
    assert "random weights" in browser.find_element("tag name", "table").text


def test_a_thumbnail_whose_value_is_on_no_patch_is_not_darkened(browser, report):
    recs = {f: json.loads((report / "features" / f"{f}.json").read_text()) for f in live_features(report)}
    f = next(f for f, r in recs.items() if any(not any(base64.b64decode(x["map"])) for x in r["top"]))
    open_page(browser, report / "features" / f"{f}.html")
    wait_for_images(browser)
    first_dark = [not any(base64.b64decode(x["map"])) for x in recs[f]["top"]].index(True)
    card = f"document.querySelectorAll('#top-images .thumb')[{first_dark}]"
    assert browser.execute_script(f"return {card}.querySelector('canvas')") is None
    assert browser.execute_script(f"return {card}.querySelector('.nopatch').textContent") == "no patch fires"


def test_the_compare_page_shows_its_table_and_plots_without_errors(browser, tar_encoded, tmp_path):
    from clipsae.analysis.commands import run_compare

    store, _ = tar_encoded
    run_compare([(store, "sae")], tmp_path, "max", 10, None, "cpu")
    assert open_page(browser, tmp_path / "compare.html") == []
    wait_for_images(browser)
    headers = browser.execute_script("return Array.from(document.querySelectorAll('#compare th')).map(t => t.textContent)")
    assert headers[:3] == ["codes", "hook", "sae"] and "stability" in headers
    assert browser.execute_script("return document.querySelectorAll('#compare tbody tr').length") == 1
    assert browser.execute_script("return document.getElementById('plots').naturalWidth") > 0


def test_a_page_shows_the_classes_its_feature_segments_and_the_class_over_its_top_image(browser, tar_encoded, tmp_path):
    from clipsae.analysis.commands import Target
    from clipsae.analysis.evaluation.patch_probe import run_patch_probe
    from clipsae.analysis.report.build import ReportConfig, run_report
    from clipsae.analysis.report.siblings import report_dir

    store = tmp_path / "s.zarr"
    shutil.copytree(tar_encoded[0], store)
    run_patch_probe(Target.open(store, "sae", None, progress=False))
    run_report(ReportConfig(store, "sae", k=3, per_interval=2, progress=False))
    report = report_dir(store, "sae")
    recs = {f: json.loads((report / "features" / f"{f}.json").read_text()) for f in live_features(report)}
    f = next(f for f, r in recs.items() if r.get("segment_map") and any(base64.b64decode(r["segment_map"]["class_map"])))
    assert open_page(browser, report / "features" / f"{f}.html") == []
    wait_for_images(browser)
    classes = browser.execute_script(
        "return Array.from(document.querySelectorAll('#segments tr')).slice(1).map(r => r.cells[0].textContent)")
    assert classes == [s["class"] for s in recs[f]["segments"]]
    assert browser.execute_script("return document.querySelector('#segment-class-map canvas').width") > 0
    assert recs[f]["segment_map"]["class"] in browser.find_element("id", "segment-class-map").text


@pytest.fixture(scope="module")
def universal_report(shards, tmp_path_factory):
    """The report of model 1's codes of a universal SAE over two hooks of one store made from real tars, after
    ``analyze universal`` ran on both models' codes."""
    from clipsae.analysis.commands import run_universal
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.analysis.report.build import ReportConfig, run_report
    from clipsae.analysis.report.siblings import report_dir
    from clipsae.train.configure import configure_training
    from clipsae.train.trainer import run_train
    from tests.analysis.helpers import store_from_tars

    tmp = tmp_path_factory.mktemp("universal_report")
    store = store_from_tars(tmp / "s.zarr", sorted(shards.glob("*.tar")), embed_d=6)
    plan = configure_training(None, universal=f"{store}:blocks.0,{store}:embed", tokens="cls", arch="topk", k="2",
                              expansion="2", steps=20, batch_size=8, holdout=0.0, out=tmp / "u")
    run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
    for m in (0, 1):
        run_encode(EncodeConfig(store, tmp / "u" / "models" / str(m), name=f"u{m}", progress=False, device="cpu"))
    run_universal([(store, "u0"), (store, "u1")], None, device="cpu", min_hits=1)
    run_report(ReportConfig(store, "u1", k=3, per_interval=2, progress=False))
    return report_dir(store, "u1")


def test_a_universal_latents_page_shows_its_top_images_in_the_other_model(browser, universal_report):
    pages = [p for p in (universal_report / "features").glob("*.json")
             if any(m["top"] for m in json.loads(p.read_text()).get("universal", {}).get("models", []))]
    assert pages, "no latent has top images in the other model"
    assert open_page(browser, pages[0].with_suffix(".html")) == []
    assert "universality" in browser.execute_script("return document.getElementById('universality').textContent")
    wait_for_images(browser)
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('.universal-top img')).map(i => i.naturalWidth)")
    assert shown and all(w > 0 for w in shown)
