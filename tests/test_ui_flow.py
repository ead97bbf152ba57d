"""The UI on a real run, in a real browser: a synthesis on the real stack (local Ray, SmolLM2, PostgreSQL)
fills the database; `prefsmith ui` is started as its own process; Chromium browses runs → the run → its
accepted pairs → a pair with its tool evidence, approves it with a note by mouse and flips another by
keyboard; `prefsmith export --reviewed` then writes what the reviews say.

The README's screenshots are taken here: `PREFSMITH_SCREENSHOTS=docs/screenshots pytest tests/test_ui_flow.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agents.backends.vllm_server import free_port
from configs import load_config
from pipelines.synthesis.service import synthesize
from storage.browse import PairFilter, list_pairs
from storage.db import session_scope
from storage.migrate import open_database
from tests.browser import chromium
from tests.conftest import REPO
from tests.test_synthesis import EASY, local_ray, write_config, write_prompts  # noqa: F401  (local_ray: a fixture)

pytestmark = [pytest.mark.model, pytest.mark.ray, pytest.mark.postgres, pytest.mark.browser]

RUN = "ui-flow"


def _config(folder: Path) -> Path:
    prompts = folder / "prompts.jsonl"
    write_prompts(prompts, EASY)
    return write_config(folder, prompts, in_flight=10, candidates=3, max_tokens=12)


def _start_ui(url: str, home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PREFSMITH_HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("PREFSMITH_UI_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "ui", "--db", url, "--port", str(port), "--reviewer", "ann"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return process, base
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"prefsmith ui did not start: {process.stdout.read() if process.stdout else ''}")
        time.sleep(0.2)


@pytest.mark.usefixtures("local_ray")
def test_browse_review_and_export_a_real_run(fresh_postgres_url: str, tmp_path: Path) -> None:
    report = synthesize(load_config(_config(tmp_path)), run_id=RUN, db_url=fresh_postgres_url)
    assert report.metrics.accepted >= 2, report.metrics
    engine = open_database(fresh_postgres_url)
    with session_scope(engine) as session:
        accepted, _ = list_pairs(session, PairFilter(run=RUN, status="accepted"), limit=100)
    engine.dispose()
    shots = Path(os.environ.get("PREFSMITH_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    process, base = _start_ui(fresh_postgres_url, tmp_path / "home")
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(base + "/")
            assert RUN in page.inner_text("#runs")
            page.locator("main").screenshot(path=str(shots / "runs.png"))

            page.click(f"#runs a[href='/runs/{RUN}']")
            assert page.inner_text("#run-id") == RUN
            assert page.locator("svg polyline").count() == 3
            page.screenshot(path=str(shots / "run.png"))
            page.click("a[href$='status=accepted']")
            rows = page.locator("#rows tr.row")
            assert rows.count() == len(accepted)

            first, second = accepted[0]["id"], accepted[1]["id"]
            page.click(f"#rows a[href='/pairs/{first}']")
            assert "reference_answer" in page.inner_text("section.round.this")
            assert page.locator("section.round.this .tag.pass, section.round.this .tag.fail").count() >= 2
            page.screenshot(path=str(shots / "pair.png"), full_page=True)

            page.fill("textarea[name=note]", "correct over wrong; checked by hand")
            page.click("button[value=approved]")
            page.wait_for_selector("#review-in-force")
            assert page.inner_text("#review-in-force") == "approved"
            assert "by ann at" in page.inner_text("#reviews")
            page.screenshot(path=str(shots / "review.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 560})

            page.goto(f"{base}/pairs/{second}")
            with page.expect_navigation():
                page.keyboard.press("f")
            page.goto(f"{base}/pairs/{second}")
            assert page.inner_text("#review-in-force") == "flipped"
    finally:
        process.terminate()
        process.wait(timeout=30)

    out = tmp_path / "reviewed"
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "export",
            "--run",
            RUN,
            "--out",
            str(out),
            "--format",
            "jsonl",
            "--reviewed",
            "--db",
            fresh_postgres_url,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    rows = {r["pair_id"]: r for r in map(json.loads, (out / "data.jsonl").read_text().splitlines())}
    by_id = {r["id"]: r for r in accepted}
    assert set(rows) == set(by_id)
    assert rows[first]["review"] == "approved" and rows[second]["review"] == "flipped"
    assert rows[first]["chosen"][0]["content"].startswith(by_id[first]["chosen"])
    assert rows[second]["chosen"][0]["content"].startswith(by_id[second]["rejected"])
    assert rows[second]["rejected"][0]["content"].startswith(by_id[second]["chosen"])
    assert all(r["review"] is None for pid, r in rows.items() if pid not in (first, second))
