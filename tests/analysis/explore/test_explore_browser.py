"""The live explorer (clipsae serve) as a person uses it: headless Chromium, driven by selenium through
Debian's chromedriver, against the session's real uvicorn server (the ``served`` fixture)."""

import urllib.parse

import pytest

from tests.browser import chromium, needs_chromium

pytestmark = needs_chromium

LIMIT_S = 300  # bounds a hung wait only: the model loads on first use, on CPU; nothing asserts how long it took


@pytest.fixture(scope="module")
def browser():
    yield from chromium(1400, 1000)


def wait(browser, predicate, limit_s: float = LIMIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, limit_s).until(predicate)


def js(browser, script, *args):
    return browser.execute_script(script, *args)


def open_page(browser, served, path):
    """Open ``path`` of the explorer with the console drained first: what ``severe`` then reads is this
    page's (and whatever the test does on it after)."""
    browser.get("about:blank")
    browser.get_log("browser")
    browser.get(served.url + path)


def severe(browser):
    return [m for m in browser.get_log("browser") if m["level"] == "SEVERE"]


def wait_for_images(browser):
    wait(browser, lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)"))
    return js(browser, "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")


def table_column(browser, index):
    return js(browser, "return Array.from(document.querySelectorAll('#feature-table tbody tr'))"
                       ".map(r => r.cells[arguments[0]].textContent)", index)


def header_index(browser, text):
    heads = js(browser, "return Array.from(document.querySelectorAll('#feature-table th')).map(t => t.textContent)")
    return heads.index(text)


def table_loaded(browser):
    """The table has rows and its headers carry the sort classes that each load sets at its end."""
    return js(browser, "return document.querySelectorAll('#feature-table tbody tr').length > 0 && "
                       "document.querySelectorAll('#feature-table th.sortable').length > 0")


def densest_feature(served) -> int:
    status, body = served.get("/api/codes/l3/features?sort=density&desc=1&limit=1")
    assert status == 200, body
    return body["rows"][0]["feature"]


def test_the_features_table_sorts_filters_and_jumps_by_number_and_by_text(browser, served):
    from selenium.webdriver.common.by import By

    open_page(browser, served, "/features/l3")
    wait(browser, table_loaded)
    assert js(browser, "return document.querySelectorAll('#feature-table tbody tr').length") > 0

    # Sorting by image density (descending on the first click) puts the densest feature first.
    col = header_index(browser, "image density")
    browser.find_element(By.XPATH, "//th[text()='image density']").click()
    wait(browser, lambda d: "sorted-desc" in d.find_element(By.XPATH, "//th[text()='image density']").get_attribute("class"))
    values = [float(v) for v in table_column(browser, col) if v != ""]
    assert values and values[0] == max(values)
    status, every = served.get("/api/codes/l3/features?limit=1000")
    assert status == 200
    assert values[0] == max(r["density"] for r in every["rows"] if r["density"] is not None)
    assert int(table_column(browser, 0)[0]) == densest_feature(served)

    # Filtering by a top label shown in the table leaves only the rows whose top label contains it.
    labels = [t for t in table_column(browser, header_index(browser, "top label")) if t]
    assert labels, "no row of the table has a top label"
    needle = labels[0][1:] if len(labels[0]) > 1 else labels[0]  # a part of it, in another case
    needle = needle.upper()
    # The filter keeps the table's sort (image density, largest first).
    status, filtered = served.get(f"/api/codes/l3/features?sort=density&desc=1&label={urllib.parse.quote(needle)}&limit=50")
    assert status == 200 and filtered["total"] >= 1
    browser.find_element(By.ID, "filter-label").send_keys(needle)
    browser.find_element(By.ID, "filter-apply").click()
    wait(browser, lambda d: f"({filtered['total']:,} features)" in d.find_element(By.ID, "page-info").text
         and len(table_column(d, 0)) == min(50, filtered["total"]))
    shown = table_column(browser, header_index(browser, "top label"))
    assert all(needle.lower() in t.lower() for t in shown), shown
    assert [int(f) for f in table_column(browser, 0)] == [r["feature"] for r in filtered["rows"]]

    # Go to a feature by its number.
    f = densest_feature(served)
    browser.find_element(By.ID, "jump-input").send_keys(str(f))
    browser.find_element(By.ID, "jump-button").click()
    wait(browser, lambda d: d.current_url == f"{served.url}/features/l3/{f}")
    wait(browser, lambda d: d.find_elements(By.TAG_NAME, "h1"))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"Feature {f}")
    assert severe(browser) == []

    # Go to a feature by a text: the model loads on first use; then follow the first hit.
    open_page(browser, served, "/features/l3")
    wait(browser, table_loaded)
    browser.find_element(By.ID, "text-input").send_keys("a dog on grass")
    browser.find_element(By.ID, "text-button").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "a.text-hit"))
    assert browser.find_element(By.ID, "message").text == ""
    hits = browser.find_elements(By.CSS_SELECTOR, "a.text-hit")
    status, search = served.get("/api/codes/l3/search?text=a%20dog%20on%20grass&n=10")
    assert status == 200
    assert [int(h.text) for h in hits] == [x["feature"] for x in search["features"]]
    first = hits[0].text
    hits[0].click()
    wait(browser, lambda d: d.current_url == f"{served.url}/features/l3/{first}")
    wait(browser, lambda d: d.find_elements(By.TAG_NAME, "h1"))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"Feature {first}")
    assert severe(browser) == []


def test_a_feature_page_decodes_its_thumbnails_shows_cofiring_and_opens_an_image(browser, served):
    from selenium.webdriver.common.by import By

    f = densest_feature(served)
    open_page(browser, served, f"/features/l3/{f}")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#top-images .thumb"))
    images = wait_for_images(browser)
    assert images and all(width > 0 for _, width in images), images
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"Feature {f}")
    assert browser.find_elements(By.ID, "cofiring")
    status, rec = served.get(f"/api/codes/l3/features/{f}")
    assert status == 200
    assert js(browser, "return document.querySelectorAll('#top-images .thumb').length") == len(rec["top"])
    cofiring = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#cofiring a")]
    assert cofiring == [str(c["feature"]) for c in rec["cofiring"]]
    assert severe(browser) == []

    key = rec["top"][0]["key"]
    browser.find_element(By.CSS_SELECTOR, "#top-images .thumb").click()
    wait(browser, lambda d: d.current_url == f"{served.url}/images/l3/{urllib.parse.quote(key)}")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".feature-card"))
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Image {key} in l3"
    assert severe(browser) == []


def test_an_image_page_lists_the_features_of_a_clicked_patch_and_steers_them(browser, served):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    key = "img0000003"
    status, whole = served.get(f"/api/codes/l3/images/{key}")
    assert status == 200 and whole["features"]
    open_page(browser, served, f"/images/l3/{key}")
    listed = lambda d: [a.text for a in d.find_elements(By.CSS_SELECTOR, ".feature-card a.feature-link")]  # noqa: E731
    wait(browser, lambda d: listed(d) == [f"feature {x['feature']}" for x in whole["features"]])
    assert browser.find_elements(By.CSS_SELECTOR, ".feature-card")

    # A patch whose features differ from the whole image's, so that the list visibly changes.
    gh, gw = whole["grid"]
    per_patch = {}
    for p in range(gh * gw):
        status, ans = served.get(f"/api/codes/l3/images/{key}?patches={p}")
        assert status == 200
        per_patch[p] = [x["feature"] for x in ans["features"]]
    changed = [p for p, fs in per_patch.items() if fs and fs != [x["feature"] for x in whole["features"]]]
    assert changed, "every patch lists the whole image's features"
    p = next((q for q in changed if per_patch[q][0] != whole["features"][0]["feature"]), changed[0])
    r, c = divmod(p, gw)

    # The overlay is sized once the image has loaded; click the centre of the patch's cell.
    wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('main-image'), g = document.getElementById('patch-grid');"
        "return i.complete && i.naturalWidth > 0 && g.width > 0 && g.width === i.width"))
    canvas = browser.find_element(By.ID, "patch-grid")
    w, h = js(browser, "const b = arguments[0].getBoundingClientRect(); return [b.width, b.height]", canvas)
    x, y = (c + 0.5) * w / gw - w / 2, (r + 0.5) * h / gh - h / 2  # offsets from the element's centre
    ActionChains(browser).move_to_element_with_offset(canvas, int(x), int(y)).click().perform()
    wait(browser, lambda d: "1 patch(es) selected" in d.find_element(By.ID, "selection-info").text)
    wait(browser, lambda d: listed(d) == [f"feature {f}" for f in per_patch[p]])
    assert listed(browser)[0] == f"feature {per_patch[p][0]}"

    # Steer: scale the first listed feature by 20; the model runs on the image before and after.
    slider = browser.find_element(By.CSS_SELECTOR, "input.slider")
    js(browser, "arguments[0].value = '20'; arguments[0].dispatchEvent(new Event('input', {bubbles: true}))", slider)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#steer-table td.prob-after")
         and "1 edit(s)" in d.find_element(By.ID, "steer-cosine").text)
    assert browser.find_element(By.ID, "message").text == ""
    rows = js(browser, "return Array.from(document.querySelectorAll('#steer-table tr')).slice(1)"
                       ".map(r => Array.from(r.cells).map(c => c.textContent))")
    assert rows and len(rows) == min(8, served.explorer.codes("l3").describe()["classes"])
    assert all(cls for cls, *_ in rows)
    cosine = float(browser.find_element(By.ID, "steer-cosine").text.split("= ")[1].split(";")[0])
    assert cosine < 1
    # The edit moves the class probabilities (by a visible amount, with these random weights too).
    assert any(before != after for _, before, after, _ in rows), rows
    assert browser.find_element(By.CSS_SELECTOR, "input.slider + .slider-value").text == "×20"

    browser.find_element(By.ID, "steer-reset").click()
    wait(browser, lambda d: "0 edit(s)" in d.find_element(By.ID, "steer-cosine").text)
    assert "= 1.0000;" in browser.find_element(By.ID, "steer-cosine").text
    assert js(browser, "return Array.from(document.querySelectorAll('input.slider')).every(s => s.value === '1')")
    assert severe(browser) == []


def test_a_round_of_the_game_gives_a_verdict_a_score_and_marks_the_answer(browser, served):
    from selenium.webdriver.common.by import By

    open_page(browser, served, "/game/l3")
    js(browser, "sessionStorage.clear()")  # the score is kept per tab: start this test's from none
    browser.refresh()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button.choice"))
    assert len(browser.find_elements(By.CSS_SELECTOR, ".game-feature")) >= 1
    assert "0 of 0 rounds" in browser.find_element(By.ID, "game-score").text
    choices = browser.find_elements(By.CSS_SELECTOR, "button.choice")
    assert len(choices) == 4
    picked = choices[0].get_attribute("data-image")
    choices[0].click()
    wait(browser, lambda d: d.find_element(By.ID, "game-verdict").text)
    verdict = browser.find_element(By.ID, "game-verdict").text
    assert "1 rounds" in browser.find_element(By.ID, "game-score").text
    answers = browser.find_elements(By.CSS_SELECTOR, "button.choice.answer")
    assert len(answers) == 1
    answer_key = answers[0].find_element(By.TAG_NAME, "img").get_attribute("alt")
    assert verdict.endswith(f"it was {answer_key}.")
    right = answers[0].get_attribute("data-image") == picked
    assert verdict.startswith("Right" if right else "No")
    assert browser.find_element(By.ID, "game-score").text == f"score: {int(right)} of 1 rounds"
    assert all(not b.is_enabled() for b in browser.find_elements(By.CSS_SELECTOR, "button.choice"))
    assert severe(browser) == []


def test_the_compare_page_shows_the_image_in_a_column_per_served_codes(browser, served):
    from selenium.webdriver.common.by import By

    open_page(browser, served, "/compare/img0000003")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#compare .compare-column"))
    columns = browser.find_elements(By.CSS_SELECTOR, "#compare .compare-column")
    assert [c.find_element(By.CSS_SELECTOR, "h2").text for c in columns] == list(served.explorer.served)
    assert all(c.find_elements(By.CSS_SELECTOR, ".card") for c in columns)
    images = wait_for_images(browser)
    assert images and all(width > 0 for _, width in images), images
    assert severe(browser) == []
