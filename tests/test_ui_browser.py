"""The UI in a real browser (Debian's Chromium through Playwright) against a database holding hostile model
output (tests/hostile_texts.py): script tags, event handlers, `javascript:` URLs, markup that closes the
page's own elements, a 1 MB answer and Unicode bidi controls. Every page renders them as text — no dialog, no
handler attribute, no script but the UI's own, no request to another host — and stays usable: a review
made by mouse and one made by keyboard are stored and shown.

The same flow against a real synthesis run, with the README's screenshots: tests/test_ui_flow.py.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from storage.db import session_scope
from storage.migrate import open_database, upgrade
from storage.models import PairReview
from tests.browser import chromium, serve
from tests.hostile_texts import RUN, XSS, store_hostile_run
from ui.app import UiSettings

pytestmark = [pytest.mark.browser]

PROBE = """() => ({
  xss: window.__xss === undefined ? null : window.__xss,
  scripts: Array.from(document.scripts).map(s => new URL(s.src, location.href).pathname),
  handlers: Array.from(document.querySelectorAll('*')).flatMap(e => Array.from(e.attributes)
      .filter(a => a.name.toLowerCase().startsWith('on')).map(a => e.tagName + ' ' + a.name)),
  jsUrls: Array.from(document.querySelectorAll('[href],[src],[action],[formaction]'))
      .map(e => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('action') || '')
      .filter(v => /^\\s*javascript:/i.test(v)),
  injected: document.getElementById('injected') !== null,
  foreign: Array.from(document.querySelectorAll('iframe,object,embed,meta[http-equiv],link[rel=stylesheet]'))
      .map(e => e.outerHTML.slice(0, 80)).filter(h => !h.includes('/static/ui.css')),
  bodyVisible: getComputedStyle(document.body).display !== 'none',
})"""


@pytest.fixture
def hostile_ui(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    upgrade(url)
    engine = open_database(url)
    pair_ids, huge = store_hostile_run(engine)
    with serve(UiSettings(engine, reviewer="tester")) as base:
        yield engine, base, pair_ids, huge
    engine.dispose()


def test_hostile_texts_render_inert_and_the_page_stays_usable(hostile_ui) -> None:
    engine, base, pair_ids, huge = hostile_ui
    dialogs: list[str] = []
    offsite: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: offsite.append(r.url) if urlsplit(r.url).hostname != "127.0.0.1" else None)
        for path in ["/", f"/runs/{RUN}", f"/pairs?run={RUN}", *[f"/pairs/{p}" for p in pair_ids]]:
            response = page.goto(base + path, wait_until="load")
            assert response is not None and response.status == 200, path
            found = page.evaluate(PROBE)
            assert found["xss"] is None, (path, found)
            assert found["scripts"] == ["/static/ui.js"], (path, found)
            assert found["handlers"] == [] and found["jsUrls"] == [] and not found["injected"], (path, found)
            assert found["foreign"] == [] and found["bodyVisible"], (path, found)
        assert dialogs == [] and offsite == []

        # the markup is there to read, as text; bidi controls are shown as marks, not obeyed
        page.goto(f"{base}/pairs/{pair_ids[1] if pair_ids[0] == huge else pair_ids[0]}")
        assert XSS[0] in page.locator(".message pre.text").first.inner_text()
        assert page.locator(".ctl").first.is_visible()
        # usable: a review by mouse, with a hostile note, is stored and shown as text
        page.fill("textarea[name=note]", XSS[2])
        page.click("button[value=approved]")
        page.wait_for_selector("#review-in-force")
        assert page.inner_text("#review-in-force") == "approved"
        assert XSS[2] in page.inner_text("#reviews")

        # the 1 MB answer: the page shows its beginning and links the whole text; the keyboard still reviews
        page.goto(f"{base}/pairs/{huge}")
        assert "whole text" in page.inner_text("#chosen")
        with page.expect_navigation():
            page.keyboard.press("f")
        page.goto(f"{base}/pairs/{huge}")
        assert page.inner_text("#review-in-force") == "flipped"
        assert dialogs == [] and offsite == [] and page.evaluate("window.__xss === undefined")
    with session_scope(engine) as session:
        decisions = {(r.decision, r.reviewer) for r in session.execute(select(PairReview)).scalars()}
    assert decisions == {("approved", "tester"), ("flipped", "tester")}


def test_token_masks_and_a_bias_report_from_the_real_renderers(tmp_path: Path) -> None:
    """The training page serves what `prefsmith inspect masks` and the bias report write (made here by the
    same renderers, on a model-free baseline and hand-made mask weights): the masks page in a sandboxed frame
    with its PNG, the report's table and plots."""
    from tests.conftest import LABOR_DATA
    from tools.bls import read_table
    from training.evaluation.bias_report import constant_baseline, held_out_rows, write_report
    from training.inspect_masks import MaskedPair, MaskedResponse, render_html, render_png

    root = tmp_path / "artifacts"
    masks = root / "sparsepo-run" / "final"
    masks.mkdir(parents=True)
    tokens = ["The", " answer", " is", " 42", " <script>window.__xss=1</script>"]
    pair = MaskedPair("What is 40 + 2?", MaskedResponse("chosen", tokens, [0.1, 0.2, 0.3, 1.5, 0.0], [0.5] * 5),
                      MaskedResponse("rejected", tokens[:3] + [" 43"], [0.1, 0.2, 0.3, 1.2], [0.5] * 4))
    (masks / "masks.html").write_text(render_html([pair], "SparsePO masks of sparsepo-run/final"), encoding="utf-8")
    render_png([pair], masks / "masks.png")
    table = read_table(LABOR_DATA / "cpsaat11_2022_clean.csv")
    train, rows = held_out_rows(table, min_employed=100, held_out_fraction=0.3, split_seed=0, limit=None)
    write_report(root / "bias-before", table, [constant_baseline(train, rows)], rows, ["model-free baseline"], {})

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    engine = open_database(url)
    dialogs: list[str] = []
    try:
        with serve(UiSettings(engine, artifacts=[root])) as base, chromium() as browser:
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{base}/training")
            frame = page.frame_locator("iframe.masks")
            assert " 42" in frame.locator("body").inner_text()
            assert frame.locator("span.t").count() == 2 * (5 + 4)  # reward and KL mask of both responses
            image = page.locator("section.masks img")
            image.wait_for()
            page.wait_for_function("img => img.complete", arg=image.element_handle())  # loaded, or failed to
            assert page.evaluate("img => img.naturalWidth", image.element_handle()) > 100
            page.click("a[href*='bias-before']")
            assert "baseline: train mean" in page.inner_text("#bias")
            assert f"{len(rows)} held-out occupations" in page.inner_text("main")
            plots = page.locator(".plots img")
            assert plots.count() >= 1
            for i in range(plots.count()):
                plot = plots.nth(i).element_handle()
                page.wait_for_function("img => img.complete", arg=plot)  # a loaded host may still be fetching it
                assert page.evaluate("img => img.naturalWidth", plot) > 100
            assert dialogs == [] and page.evaluate("window.__xss === undefined")
    finally:
        engine.dispose()
