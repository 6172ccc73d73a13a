"""The pages in a real browser: headless Chromium loads them from the app on uvicorn.

Chromium's own ``--dump-dom`` and ``--screenshot`` flags drive it, so no browser automation
library is needed; the Debian package ``chromium`` provides it.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from ablaze_helpers import (
    KNOWN_VERSIONS,
    SETTINGS,
    Clock,
    observations,
    serving,
    spec,
    write_observations,
)
from fastapi.testclient import TestClient

from ablaze.api import create_app
from ablaze.store import ExperimentStore, ResultStore

pytestmark = pytest.mark.browser

PREFIX = "/ablaze"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
BROWSER_TIMEOUT_SECONDS = 60
# A blank 1200 x 900 page is about 5 KB as a PNG; a page of tables and charts is several times.
MIN_SCREENSHOT_BYTES = 15_000


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Chromium is missing: install it with `apt-get install -y chromium`", pytrace=False
        )
    return found


def browse(url: str, profile: Path, *extra: str) -> str:
    completed = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_SECONDS,
        check=True,
    )
    return completed.stdout


@pytest.fixture
def site(experiments: ExperimentStore, results: ResultStore):
    """The app under /ablaze with one running experiment and its observations, on uvicorn."""
    clock = Clock()
    app = create_app(
        SETTINGS.model_copy(update={"url_prefix": PREFIX}),
        experiments=experiments,
        results=results,
        known_model_versions=lambda: KNOWN_VERSIONS,
        clock=clock,
    )
    client = TestClient(app)
    assert client.post(f"{PREFIX}/experiments", json=spec()).status_code == 201
    assert client.post(f"{PREFIX}/experiments/homepage-ranker/start").status_code == 200
    cells = {
        "control": observations(10_000, 2_000),
        "treatment": observations(10_040, 2_400, plays_mean=2.1),
    }
    write_observations(results, cells)
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}{PREFIX}"


def test_the_results_page_renders_in_chromium(site: str, tmp_path: Path) -> None:
    dom = browse(f"{site}/experiments/homepage-ranker/page", tmp_path / "profile", "--dump-dom")
    assert "<h1>homepage-ranker" in dom
    verdict = re.search(r'<div id="srm-verdict" class="([^"]+)">(.*?)</div>', dom, re.DOTALL)
    assert verdict is not None
    assert verdict[1] == "verdict verdict-ok"
    assert "Sample ratio OK" in verdict[2]
    cells = re.findall(r'<tr class="cell">\s*<td>([a-z-]+)</td>', dom)
    assert cells == ["control", "treatment"]
    assert dom.count('<svg class="intervals"') == 3
    assert len(re.findall(r'<line class="interval[ "]', dom)) == 6
    assert dom.count('<span class="badge trustworthy">') == 3


def test_the_list_page_renders_in_chromium(site: str, tmp_path: Path) -> None:
    dom = browse(f"{site}/", tmp_path / "profile", "--dump-dom")
    assert '<a href="/ablaze/experiments/homepage-ranker/page">homepage-ranker</a>' in dom
    assert '<span class="state state-running">running</span>' in dom


def test_a_screenshot_of_the_results_page_is_not_blank(site: str, tmp_path: Path) -> None:
    screenshot = tmp_path / "page.png"
    browse(
        f"{site}/experiments/homepage-ranker/page",
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1200,900",
    )
    image = screenshot.read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", image[16:24])
    assert (width, height) == (1200, 900)
    assert len(image) > MIN_SCREENSHOT_BYTES
