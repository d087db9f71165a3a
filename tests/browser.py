"""A headless Chromium driven by selenium, for the report tests: Debian's ``chromium`` and
``chromium-driver`` (``.ci/run`` installs them with apt). ``chromium_or_skip`` skips a test with
the reason when they are not installed, the one skip these tests allow."""
from __future__ import annotations

import os
import shutil
from typing import Any, List

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chromium_or_skip(width: int = 1400, height: int = 1000) -> Any:
    """A started headless Chromium (selenium ``WebDriver``) that records the console."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium / chromium-driver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def console_errors(driver: Any) -> List[str]:
    """The page's console messages of level SEVERE (JavaScript errors) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_until_ready(driver: Any, timeout: float = 120.0) -> float:
    """Wait for the report to finish drawing; returns the page's milliseconds to that point."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    return float(driver.execute_script("return window.reportReadyMs"))
