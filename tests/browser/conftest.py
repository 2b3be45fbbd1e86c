"""The browser tests' Chromium: Debian's `chromium` package (never `playwright
install`), driven by Playwright; every test here is skipped, saying why, where
either is missing."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = os.environ.get("NEUROGRID_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def sync_api() -> Any:
    """playwright.sync_api, or the test is skipped."""
    api = pytest.importorskip("playwright.sync_api",
                              reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                    "NEUROGRID_CHROMIUM)")
    return api


@pytest.fixture(scope="module")
def browser(sync_api: Any) -> Iterator[Any]:
    """A headless Chromium for the module's tests."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        yield browser
        browser.close()
