"""A real browser for the UI's tests: Debian's Chromium (installed by `make install`) driven by Playwright, and
the UI served by uvicorn on a free loopback port in a thread of the test process."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from agents.backends.vllm_server import free_port
from ui.app import UiSettings, create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def serve(settings: UiSettings) -> Iterator[str]:
    """The UI on http://127.0.0.1:PORT for the duration of the block; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the UI did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's Browser)."""
    if not shutil.which(CHROMIUM):
        pytest.fail(
            "Chromium is needed for the UI's browser tests: `make install` installs it as root "
            "(apt-get install chromium)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
