"""Headless Chromium for the tests that look at a page: Debian's chromium and chromium-driver, driven by Selenium.

`make browser` (a step of `make test`) installs both with apt-get, the way `make services` installs
PostgreSQL: installers that download a browser do not work offline. The driver's path is given, so Selenium
never looks for one on the network. Flags: as root the sandbox cannot start (--no-sandbox); without the
background-networking flags Chromium keeps calling Google's hosts, which this network refuses.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900",
)


def start_chromium(profile: Path):
    """A headless Chromium (a Selenium WebDriver) with a fresh profile in `profile`; the caller quits it."""
    missing = [f"{path} (Debian package {package})" for path, package in
               ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")) if not path.exists()]
    if missing:
        pytest.fail(f"headless Chromium is not installed: missing {', '.join(missing)}; run `make browser` "
                    "(apt-get install chromium chromium-driver)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # The browser console (errors and warnings of the page) for the tests to read.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript"}

    def log_message(self, format, *args):
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def console_errors(driver) -> list[str]:
    """The page's console messages at level SEVERE since the last call, less the browser's own request for
    /favicon.ico (a page without an icon link gets a 404 for it from a plain file server)."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "/favicon.ico " not in entry["message"]]


def remove_profile(profile: Path) -> None:
    shutil.rmtree(profile, ignore_errors=True)
