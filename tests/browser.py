"""A real headless Chromium (Debian's chromium + chromium-driver, installed by `make test`)
driven with Selenium: open a page from disk, collect console errors, check every image,
take a screenshot. Also makes the README's screenshot:

    .venv/bin/python -m tests.browser <run folder>/report/index.html docs/report.png
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")


@dataclass
class PageCheck:
    title: str
    console_errors: list[str]
    images: int  # <img> elements on the page
    broken_images: list[str]  # src of those that did not decode
    screenshot: bytes  # PNG of the first screen


def have_browser() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium (Selenium's driver) with no network, its profile removed after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def load_seconds(path: str) -> float:
    """Seconds from asking for `path` (a file on disk) to its load event (lazy images not waited
    for): how fast a page opens."""
    with chromium() as driver:
        driver.get("about:blank")
        t0 = time.perf_counter()
        driver.get("file://" + os.path.abspath(path))
        return time.perf_counter() - t0


def open_page(path: str, width: int = 1400, height: int = 1000, timeout: float = 60.0) -> PageCheck:
    """Load `path` (a file on disk) with no server and no network; wait until every image has
    loaded or failed (lazy ones included)."""
    with chromium(width, height) as driver:
        driver.get("file://" + os.path.abspath(path))
        driver.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = driver.execute_script(
                "return document.readyState !== 'complete' ? -1 :"
                " Array.from(document.images).filter(i => !i.complete).length")
            if pending == 0:
                break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"{path}: images still loading after {timeout} s")
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.getAttribute('src'))")
        images = driver.execute_script("return document.images.length")
        driver.execute_script("window.scrollTo(0, 0)")
        shot = driver.get_screenshot_as_png()
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        return PageCheck(driver.title, errors, images, broken, shot)


if __name__ == "__main__":
    page, png = sys.argv[1], sys.argv[2]
    check = open_page(page, width=int(os.environ.get("WIDTH", 1400)), height=int(os.environ.get("HEIGHT", 1500)))
    with open(png, "wb") as f:
        f.write(check.screenshot)
    print(f"{png}: {check.images} images, {len(check.broken_images)} broken, "
          f"{len(check.console_errors)} console errors")
