"""Headless Chromium for the browser tests: Debian's ``chromium``, driven by Playwright.

Playwright's sync API stays on the thread that started it, so the browser runs on a
thread of its own and trio (where Mallard runs) awaits each call without blocking.
Chromium resolves every ``*.test`` name to 127.0.0.1. Tests save screenshots under
``tests/artifacts/``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from playwright.sync_api import Browser, sync_playwright

T = TypeVar("T")

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium")
# Reported as console errors, so that a blocked request or script fails the test.
REPORT_CSP_VIOLATIONS = """
addEventListener("securitypolicyviolation", (event) =>
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`));
"""


class Chromium:
    """Headless Chromium on a thread of its own: Playwright's sync API stays on the
    thread that started it, and the trio loop (where Mallard runs) keeps serving."""

    def __init__(self, executable: str) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
        self._playwright = self._thread.submit(lambda: sync_playwright().start()).result()
        self.browser: Browser = self._thread.submit(
            lambda: self._playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=["--host-resolver-rules=MAP *.test 127.0.0.1"],
            )
        ).result()

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the browser thread, awaited without blocking trio."""
        future = self._thread.submit(function, *args)
        return await trio.to_thread.run_sync(future.result)

    def close(self) -> None:
        self._thread.submit(self.browser.close).result()
        self._thread.submit(self._playwright.stop).result()
        self._thread.shutdown()


@pytest.fixture(scope="module", name="chromium")
def chromium_fixture() -> Iterator[Chromium]:
    """The ``chromium`` fixture: one browser per test module that imports it."""
    if CHROMIUM is None:
        pytest.skip("no chromium executable on PATH (nox -s tests installs Debian's chromium)")
    browser = Chromium(CHROMIUM)
    yield browser
    browser.close()


def screenshot_path(test_name: str) -> Path:
    """Where a test's screenshot goes: ``tests/artifacts/<test name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", test_name)
    return ARTIFACTS / f"{name}.png"
