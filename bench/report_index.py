"""How fast the report's index opens and sorts with 65,536 features, in headless Chromium.

An index of random columns (what `analyze report` writes for a 65,536-latent SAE with every
feature live) is written with the report's own code; Chromium (Debian's chromium and
chromium-driver, driven by selenium) opens it from disk. Measured in the page with
performance.now(): load to first table rendered, and one sort by each numeric column. The
reference, in the same run, is the same index with 1,024 features: the ratio shows what the size
costs.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import scratch  # noqa: E402
from clipsae.analysis.report import site  # noqa: E402

SORTED = ("image density", "token density", "mean top-20 value", "label entropy", "top label")


def make_index(out: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    dens = 10 ** rng.uniform(-5, -0.5, n)
    labels = [f"class {i}" for i in rng.integers(0, 1000, n)]
    table = {"feature": list(range(n)), "density_images": [float(f"{x:.3g}") for x in dens],
             "density_tokens": [float(f"{x / 7:.3g}") for x in dens],
             "mean_top20": [float(f"{x:.3g}") for x in rng.lognormal(1, 0.5, n)],
             "entropy": [float(f"{x:.3g}") for x in rng.uniform(0, 4, n)], "top_label": labels, "name": [None] * n}
    out.mkdir(parents=True)
    site.write_index(out, {"title": f"{n} features", "summary": [], "n_features": n, "n_live": n, "table": table,
                           "correlations": []})
    site.copy_assets(out)
    return out / "index.html"


def measure(driver, index: Path) -> tuple[float, dict[str, float]]:
    from selenium.webdriver.common.by import By

    t = time.perf_counter()
    driver.get(index.as_uri())
    driver.find_element(By.CSS_SELECTOR, "#feature-table tbody tr")
    load = time.perf_counter() - t
    sorts = {}
    for name in SORTED:
        th = driver.find_element(By.XPATH, f"//th[text()='{name}']")
        sorts[name] = driver.execute_script(
            "const t = performance.now(); arguments[0].click(); return performance.now() - t;", th)
    return load, sorts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--features", type=int, default=65_536)
    p.add_argument("--reference", type=int, default=1_024)
    a = p.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        with scratch("clipsae-bench-index-") as tmp:
            big, ref = make_index(tmp / "big", a.features), make_index(tmp / "ref", a.reference)
            size = (tmp / "big" / "data" / "index.js").stat().st_size / 2**20
            measure(driver, ref)  # warm the browser
            ref_load, ref_sorts = measure(driver, ref)
            load, sorts = measure(driver, big)
    finally:
        driver.quit()
    print(f"index of {a.features} features ({size:.1f} MiB of data): opened and first page drawn in {load:.2f} s; "
          f"{a.reference} features: {ref_load:.2f} s; ratio {load / ref_load:.1f}")
    for name in SORTED:
        print(f"sort by {name}: {sorts[name]:.0f} ms ({a.reference} features: {ref_sorts[name]:.1f} ms)")


if __name__ == "__main__":
    main()
