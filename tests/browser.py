"""Headless Chromium, driven by selenium through Debian's chromedriver, for the tests of every page."""

import os
import shutil
import tempfile

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")


def chromium(width: int = 1200, height: int = 900):
    """A headless Chromium that keeps every console message (a generator: a fixture yields from it)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium leaves a directory in $TMPDIR per start (org.chromium.Chromium.*): give it one of its own, removed
    # after it quits, so that runs of the suite do not pile them up in /tmp.
    scratch = tempfile.mkdtemp(prefix="clipsae-chromium-")
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": scratch}), options=opts)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
