"""report.html opened in headless Chromium through selenium: it loads without console errors, shows the
recommendation and decodes every image; a full-page screenshot is kept in test-artifacts/."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_report import ARTIFACTS, write_legacy_run

from fewtune.config import CostArgs
from fewtune.report.build import REPORT_HTML, write_reports


@pytest.fixture
def legacy_run(tmp_path: Path) -> Path:
    return write_legacy_run(tmp_path / "run")


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


# Flags for a quiet headless Chromium in a closed network (without the background-networking ones it keeps
# retrying update and sync endpoints).
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
]


def open_in_chromium(html: Path, screenshot: Path, profile: Path) -> tuple[str, list[dict[str, Any]], bool]:
    """Load ``html`` in headless Chromium; return the recommendation's text, the browser console log and
    whether every image decoded. Saves a full-page screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    browser, driver_path = _chromium() or ("", "")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(html.resolve().as_uri())
        text = driver.find_element(By.ID, "recommendation").text
        images_ok = driver.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);"
        )
        logs = driver.get_log("browser")
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            },
        )
    finally:
        driver.quit()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    return text, logs, bool(images_ok)


def test_report_html_in_headless_chromium(legacy_run: Path, tmp_path: Path) -> None:
    if _chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium/chromedriver are missing (.ci/run installs them)")
        pytest.skip(
            "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    if not os.environ.get("CI"):
        pytest.importorskip("selenium", reason="selenium is a dev extra: pip install -e '.[dev]'")
    report, _ = write_reports(legacy_run, CostArgs(volume_per_day=50_000))
    screenshot = ARTIFACTS / "report-html.png"
    text, logs, images_ok = open_in_chromium(legacy_run / REPORT_HTML, screenshot, tmp_path / "profile")
    errors = [entry for entry in logs if entry.get("level") == "SEVERE"]
    assert not errors, f"console errors: {errors}"
    assert report.recommendation.headline in text
    assert report.recommendation.reasons[0][:60] in text
    assert images_ok, "an inline image did not decode"
    assert screenshot.stat().st_size > 10_000
    shutil.copy(legacy_run / REPORT_HTML, ARTIFACTS / "report.html")
