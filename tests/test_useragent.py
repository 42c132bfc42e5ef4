"""User-Agent analysis: browser, OS, device class and the bot verdict."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mallard.ingest.useragent import ANALYSED_LENGTH, analyse, is_bot

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
IPAD_SAFARI = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Safari/605.1.15"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "browser", "os", "device"),
    [
        (CHROME_WINDOWS, "Chrome", "Windows", "Desktop"),
        (IPHONE_SAFARI, "Mobile Safari", "iOS", "Mobile"),
        (IPAD_SAFARI, "Mobile Safari", "iOS", "Tablet"),
        (ANDROID_PHONE, "Chrome Mobile", "Android", "Mobile"),
        (ANDROID_TABLET, "Chrome", "Android", "Tablet"),
        (FIREFOX_LINUX, "Firefox", "Linux", "Desktop"),
        (SAFARI_MAC, "Safari", "Mac OS X", "Desktop"),
    ],
)
def test_browsers(user_agent: str, browser: str, os: str, device: str) -> None:
    info = analyse(user_agent)
    assert (info.browser, info.os, info.device, info.is_bot) == (browser, os, device, False)


def test_versions() -> None:
    info = analyse(CHROME_WINDOWS)
    assert (info.browser_version, info.os_version) == ("124.0", "10")
    assert analyse(IPHONE_SAFARI).os_version == "17.4"


@pytest.mark.parametrize("user_agent", [GOOGLEBOT, BINGBOT, HEADLESS_CHROME])
def test_bots(user_agent: str) -> None:
    assert analyse(user_agent).is_bot is True
    assert is_bot(user_agent) is True


@pytest.mark.parametrize(
    "user_agent",
    [
        "curl/8.5.0",
        "python-httpx/0.27.0",
        "python-requests/2.31.0",
        "Wget/1.21.4",
        "Go-http-client/2.0",
        "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    ],
)
def test_server_side_http_clients_are_not_bots(user_agent: str) -> None:
    assert analyse(user_agent).is_bot is False


@pytest.mark.parametrize("user_agent", ["", CHROME_WINDOWS, IPHONE_SAFARI])
def test_browsers_and_empty_user_agent_are_not_bots(user_agent: str) -> None:
    assert analyse(user_agent).is_bot is False


def test_empty_user_agent_has_nothing() -> None:
    info = analyse("")
    assert (info.browser, info.os, info.device) == (None, None, None)


def test_client_without_known_os_has_no_device_class() -> None:
    assert analyse("curl/8.5.0").device is None


def test_only_the_start_of_a_long_user_agent_is_analysed() -> None:
    """Bot detection takes time growing with the square of the length, on the event loop."""
    browser = (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
    )
    padded = browser + " " * (ANALYSED_LENGTH - len(browser))
    assert analyse(padded + "Googlebot" + "x" * 100_000) is analyse(padded)
    assert analyse(padded).browser == "Chrome"


def test_load_parsers_compiles_the_regexes_before_the_first_event() -> None:
    """They compile at start-up (``serve`` calls it), not on the event loop while
    the first event waits."""
    code = (
        "import ua_parser\n"
        "from crawlerdetect.crawlerdetect import get_compiled_crawler_regex as crawlers\n"
        "from mallard.ingest.useragent import load_parsers\n"
        "assert 'parser' not in vars(ua_parser) and crawlers.cache_info().currsize == 0\n"
        "load_parsers()\n"
        "assert 'parser' in vars(ua_parser) and crawlers.cache_info().currsize == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
