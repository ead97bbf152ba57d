"""`prefsmith ui` over HTTP (Starlette's test client on the real app and a real database of each kind): pages,
filters and keyset pages, reviews with their CSRF and origin checks, read-only mode, the token off loopback,
artifacts kept inside their folders, and `export --reviewed`. The browser-driven tests are in
tests/test_ui_browser.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from configs.errors import NotFoundError, ReviewError
from pipelines.export import export_run
from storage.browse import Cursor, PairFilter, list_pairs
from storage.db import session_scope
from storage.migrate import open_database
from storage.models import PairReview, PreferencePair
from storage.preference_sets import load_preference_set
from storage.reviews import add_review, reviews_in_force
from tests.hostile_texts import HUGE, store_hostile_run
from tests.hostile_texts import RUN as HOSTILE_RUN
from tests.test_cli import assert_user_error, prefsmith
from ui.app import UiSettings, create_app
from ui.security import CSRF_COOKIE

PAIR_LINK = re.compile(r'<a href="/pairs/([0-9a-f]{64})">')


def client(engine, **settings) -> TestClient:
    return TestClient(create_app(UiSettings(engine, **settings)), base_url="http://127.0.0.1:8765")


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no review form"
    return found.group(1)


def test_pages_show_what_the_database_holds(sample_db) -> None:
    engine, sample = sample_db
    ui = client(engine)
    runs = ui.get("/")
    assert runs.status_code == 200 and 'href="/runs/sample"' in runs.text
    run = ui.get("/runs/sample")
    assert run.status_code == 200
    assert f">{sample.pairs}</a>" in run.text and f">{sample.accepted}</a>" in run.text
    assert "Check your arithmetic." in run.text and "<polyline" in run.text  # versions with diffs, charts
    listed = PAIR_LINK.findall(ui.get("/pairs?run=sample").text)
    assert len(listed) == sample.pairs
    assert len(PAIR_LINK.findall(ui.get("/pairs?run=sample&status=accepted").text)) == sample.accepted
    assert len(PAIR_LINK.findall(ui.get("/pairs?status=rejected").text)) == sample.pairs - sample.accepted
    assert len(PAIR_LINK.findall(ui.get("/pairs?min_score=9").text)) == 3
    assert len(PAIR_LINK.findall(ui.get("/pairs?min_score=5.5&max_score=6").text)) == 2
    assert len(PAIR_LINK.findall(ui.get("/pairs?q=answer+is+4").text)) == 0  # 3+4, 4+6 … none has "is 4"
    assert len(PAIR_LINK.findall(ui.get("/pairs?q=is+22").text)) == 2  # 8+14: both rounds of episode 5
    assert len(PAIR_LINK.findall(ui.get("/pairs?source=test:arithmetic").text)) == sample.pairs
    assert len(PAIR_LINK.findall(ui.get("/pairs?source=elsewhere").text)) == 0
    failed = ui.get("/pairs?status=failed&run=sample")
    assert failed.text.count("gave up after 2 rounds") == sample.failed

    pair = ui.get(f"/pairs/{listed[0]}")
    assert pair.status_code == 200
    for shown in ("Chosen", "Rejected", "reference_answer", "matches the reference", "off by one", "Round 0",
                  "clear contrast", "You are helpful", "Rank the answers."):
        assert shown in pair.text, shown
    assert 'class="tag pass">pass' in pair.text and 'class="tag fail">fail' in pair.text
    assert 'id="chosen-finish">finished: stop<' in pair.text and 'id="rejected-finish">finished: stop<' in pair.text


def test_a_rejected_answer_abandoned_at_a_false_step_says_so(sample_db) -> None:
    from sqlalchemy import update

    from storage.models import Generation

    engine, _ = sample_db
    with session_scope(engine) as session:
        pair = session.execute(select(PreferencePair).order_by(PreferencePair.id)).scalars().first()
        session.execute(update(Generation).where(Generation.round_id == pair.round_id,
                                                 Generation.index == pair.rejected_index)
                        .values(finish_reason="abandoned"))
        pair_id = pair.id
    page = client(engine).get(f"/pairs/{pair_id}")
    assert 'class="tag fail" id="rejected-finish">abandoned at a false step<' in page.text
    assert 'id="chosen-finish">finished: stop<' in page.text


@pytest.mark.parametrize("bad", ["min_score=abc", "status=everything", "after=garbage"])
def test_bad_filters_say_what_is_wrong_and_still_show_the_page(sample_db, bad: str) -> None:
    engine, _ = sample_db
    page = client(engine).get(f"/pairs?{bad}")
    assert page.status_code == 200
    assert 'class="error"' in page.text and bad.split("=")[1] in page.text


def test_missing_things_are_404_pages_naming_them(sample_db) -> None:
    engine, _ = sample_db
    ui = client(engine)
    for path, named in (("/runs/nope", "nope"), ("/pairs/" + "0" * 64, "0" * 64),
                        ("/pairs/" + "0" * 64 + "/text/chosen", "0" * 64)):
        page = ui.get(path)
        assert page.status_code == 404 and named in page.text


def test_keyset_pages_cover_every_pair_once_newest_first(sample_db) -> None:
    engine, sample = sample_db
    seen, after = [], None
    with session_scope(engine) as session:
        while True:
            rows, after = list_pairs(session, PairFilter(run="sample"), after, limit=2)
            seen += [(r["created_at"], r["id"]) for r in rows]
            if after is None:
                break
        assert len(seen) == len(set(seen)) == sample.pairs
        assert seen == sorted(seen, reverse=True)
        assert Cursor.decode(Cursor(seen[0][0], seen[0][1]).encode()) == Cursor(seen[0][0], seen[0][1])
    # the page links chain the same way
    ui, url, ids = client(engine), "/pairs?run=sample", []
    while url:
        page = ui.get(url).text
        ids += PAIR_LINK.findall(page)
        nxt = re.search(r'id="next-page" href="([^"]+)"', page)
        url = nxt.group(1).replace("&amp;", "&") if nxt else None
    assert sorted(ids) == sorted(i for _, i in seen)


def test_a_review_needs_the_csrf_token_and_our_origin_and_is_kept_with_who_when_what(sample_db) -> None:
    engine, _ = sample_db
    ui = client(engine)
    pair_id = PAIR_LINK.findall(ui.get("/pairs?status=accepted").text)[0]
    page = ui.get(f"/pairs/{pair_id}").text
    token = csrf_of(page)
    form = {"decision": "flipped", "note": "the <b>rejected</b> one is right", "reviewer": "ann"}

    assert ui.post(f"/pairs/{pair_id}/review", data=form).status_code == 403  # no token
    assert ui.post(f"/pairs/{pair_id}/review", data=form | {"csrf": "forged"}).status_code == 403
    other = TestClient(ui.app, base_url="http://127.0.0.1:8765")  # another browser: no cookie of ours
    assert other.post(f"/pairs/{pair_id}/review", data=form | {"csrf": token}).status_code == 403
    cross = ui.post(f"/pairs/{pair_id}/review", data=form | {"csrf": token},
                    headers={"origin": "http://evil.example"})
    assert cross.status_code == 403
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(PairReview)).scalar_one() == 0

    done = ui.post(f"/pairs/{pair_id}/review", data=form | {"csrf": token}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/pairs/{pair_id}"
    shown = ui.get(f"/pairs/{pair_id}").text
    assert 'id="review-in-force">flipped' in shown and "by ann at" in shown
    assert "the &lt;b&gt;rejected&lt;/b&gt; one is right" in shown
    nxt = ui.post(f"/pairs/{pair_id}/review", data=form | {"csrf": token, "decision": "approved", "then": "next"},
                  follow_redirects=False)
    assert nxt.headers["location"] != f"/pairs/{pair_id}"  # the keyboard's path: on to the next pair
    with session_scope(engine) as session:
        assert reviews_in_force(session, [pair_id])[pair_id].decision == "approved"
        assert session.execute(select(func.count()).select_from(PairReview)).scalar_one() == 2  # history kept

    bad = ui.post(f"/pairs/{pair_id}/review", data=form | {"csrf": token, "decision": "maybe"})
    assert bad.status_code == 400 and "maybe" in bad.text


def test_read_only_shows_no_form_and_refuses_reviews(sample_db) -> None:
    engine, _ = sample_db
    ui = client(engine, read_only=True)
    pair_id = PAIR_LINK.findall(ui.get("/pairs").text)[0]
    page = ui.get(f"/pairs/{pair_id}").text
    assert "review-form" not in page and "read-only" in page
    cookie = ui.cookies.get(CSRF_COOKIE)
    refused = ui.post(f"/pairs/{pair_id}/review", data={"csrf": cookie, "decision": "approved", "reviewer": "x"})
    assert refused.status_code == 403
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(PairReview)).scalar_one() == 0


def test_a_token_guards_every_page_when_set(sample_db) -> None:
    engine, _ = sample_db
    secret = "s3cret-token-of-the-operator"
    ui = client(engine, token=secret)
    first = ui.get("/runs/sample", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/login")
    assert ui.post("/login", data={"token": "wrong", "next": "/"}).status_code == 401
    assert ui.get("/", headers={"authorization": f"Bearer {secret}"}).status_code == 200
    signed = ui.post("/login", data={"token": secret, "next": "/runs/sample"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/runs/sample"
    assert ui.get("/runs/sample").status_code == 200
    assert secret not in ui.get("/runs/sample").text
    offsite = client(engine, token=secret).post("/login", data={"token": secret, "next": "//evil.example/"},
                                                 follow_redirects=False)
    assert offsite.headers["location"] == "/"


def test_every_reply_carries_a_policy_that_forbids_inline_script(sample_db) -> None:
    engine, _ = sample_db
    ui = client(engine)
    for path in ("/", "/pairs", "/runs/sample", "/training", "/runs/missing"):
        reply = ui.get(path)
        policy = reply.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]
        assert "frame-ancestors 'none'" in policy and reply.headers["x-content-type-options"] == "nosniff"


def test_hostile_texts_are_escaped_secrets_masked_and_huge_texts_cut(db_url: str) -> None:
    engine = open_database(db_url)
    try:
        pair_ids, huge = store_hostile_run(engine)
        ui = client(engine)
        pages = [ui.get(f"/pairs/{p}").text for p in pair_ids]
        pages += [ui.get(f"/pairs?run={HOSTILE_RUN}").text, ui.get(f"/runs/{HOSTILE_RUN}").text, ui.get("/").text]
        for page in pages:
            assert page.count("<script") == 1  # the UI's own /static/ui.js
            for needle in ("<img src=x", "<svg onload", '<a href="javascript:', "<iframe src=\"javascript",
                           "<h1 id=injected", "<meta http-equiv", "<body onload", "<link rel=stylesheet href=http"):
                assert needle not in page
        run_page = ui.get(f"/runs/{HOSTILE_RUN}").text
        assert "hunter2" not in run_page and "***" in run_page
        huge_page = ui.get(f"/pairs/{huge}").text
        assert len(huge_page) < 400_000 and "whole text" in huge_page
        for page in pages[: len(pair_ids)]:  # every prompt carries bidi overrides: shown as marks, never obeyed
            assert "⟨U+202E⟩" in page and "⟨U+2066⟩" in page and "\u202e" not in page
        whole = ui.get(f"/pairs/{huge}/text/chosen")
        assert whole.headers["content-type"].startswith("text/plain") and len(whole.text) > 1_000_000
        assert "sandbox" in whole.headers["content-security-policy"]
        assert whole.text == HUGE  # as it was stored, as plain text
    finally:
        engine.dispose()


def test_artifacts_are_found_and_served_only_from_their_folders(sample_db, tmp_path: Path) -> None:
    engine, _ = sample_db
    root = tmp_path / "artifacts"
    (root / "sparsepo" / "final").mkdir(parents=True)
    (root / "sparsepo" / "final" / "masks.html").write_text("<p style='color:red'>masks</p><script>x()</script>")
    (root / "bias" / "after").mkdir(parents=True)
    # a whole report, as `prefsmith eval bias` writes it (the page reads it through the report's types)
    women = {"attribute": "women", "amplification_slope": 0.8, "ks_statistic": 0.5,
             "bias": {"value": 18.6, "ci_low": 15.0, "ci_high": 22.0, "n_occupations": 2, "confidence": 0.95}}
    report = {"labor_table": "cpsaat11.csv", "labor_year": 2022, "held_out_occupations": ["a", "b"], "notes": [],
              "bls": {"a": {"women": 40.0}, "b": {"women": 60.0}}, "settings": {},
              "conditions": [{"name": "before", "model": "m", "in_context_k": 0, "perplexity": 9.5,
                              "shares": {"a": {"women": 20.0}, "b": {"women": 80.0}},
                              "overall": {"value": 12.0, "ci_low": 10.0, "ci_high": 14.0, "n_occupations": 2},
                              "metrics": {"women": women}}]}
    (root / "bias" / "after" / "report.json").write_text(json.dumps(report))
    (root / "secret.txt").write_text("not for the web")
    ui = client(engine, artifacts=[root])
    listing = ui.get("/training").text
    assert "sparsepo/final" in listing and "bias/after" in listing
    masks = ui.get("/artifacts/0/sparsepo/final/masks.html")
    assert masks.status_code == 200 and "sandbox" in masks.headers["content-security-policy"]
    bias = ui.get("/bias/0/bias/after/report.json").text
    assert "18.6" in bias and "2 held-out occupations" in bias
    for path in ("/artifacts/0/secret.txt", "/artifacts/0/../../etc/passwd", "/artifacts/0/%2e%2e/%2e%2e/etc/hosts",
                 "/artifacts/1/sparsepo/final/masks.html", "/bias/0/secret.txt"):
        assert ui.get(path).status_code == 404, path


def test_add_review_refuses_bad_input_and_writes_nothing(sample_db) -> None:
    engine, _ = sample_db
    with session_scope(engine) as session:
        pair_id = session.execute(select(PreferencePair.id).limit(1)).scalar_one()
    for decision, note, reviewer, error in (
        ("maybe", "", "ann", ReviewError),
        ("approved", "", "   ", ReviewError),
        ("approved", "x" * 5000, "ann", ReviewError),
        ("approved", "a\x00b", "ann", ReviewError),
    ):
        with pytest.raises(error), session_scope(engine) as session:
            add_review(session, pair_id, decision, note, reviewer)
    with pytest.raises(NotFoundError), session_scope(engine) as session:
        add_review(session, "f" * 64, "approved", "", "ann")
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(PairReview)).scalar_one() == 0


def test_export_reviewed_drops_rejected_and_swaps_flipped(sample_db, tmp_path: Path) -> None:
    engine, sample = sample_db
    before = export_run(engine, "sample", tmp_path / "before")
    rows = {r["pair_id"]: r for r in load_preference_set(tmp_path / "before")}
    approved, rejected, flipped = sorted(rows)[:3]
    with session_scope(engine) as session:
        add_review(session, rejected, "approved", "", "ann")  # a later review overrides this one
        add_review(session, approved, "approved", "fine", "ann")
        add_review(session, rejected, "rejected", "both wrong", "bob")
        add_review(session, flipped, "flipped", "the rejected one is right", "ann")
    plain = export_run(engine, "sample", tmp_path / "plain")
    assert plain.content_hash == before.content_hash  # reviews change nothing unless asked for

    reviewed = export_run(engine, "sample", tmp_path / "reviewed", fmt="jsonl", reviewed=True)
    assert reviewed.num_pairs == sample.accepted - 1
    assert reviewed.manifest["filters"] == {"accepted": True, "min_score": None, "reviewed": True}
    out = {r["pair_id"]: r for r in load_preference_set(tmp_path / "reviewed")}
    assert rejected not in out
    assert out[flipped]["chosen"] == rows[flipped]["rejected"] and out[flipped]["rejected"] == rows[flipped]["chosen"]
    assert out[flipped]["chosen_score"] == rows[flipped]["rejected_score"]
    assert out[approved]["chosen"] == rows[approved]["chosen"]
    assert {r["review"] for r in out.values()} == {"approved", "flipped", None}


@pytest.mark.slow
def test_cli_refuses_to_serve_off_loopback_without_a_token(tmp_path: Path) -> None:
    assert_user_error(prefsmith("ui", "--host", "0.0.0.0", home=tmp_path), "PREFSMITH_UI_TOKEN")
    result = prefsmith("export", "--help")
    assert "--reviewed" in result.stdout


def test_the_serving_rules_need_a_long_enough_token_off_loopback() -> None:
    from configs.errors import PrefsmithError
    from ui.security import UI_TOKEN_ENV, is_loopback, serving_token

    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.2", "box")] == [
        True, True, True, True, False, False, False]
    secret = "x" * 16
    assert serving_token("127.0.0.1", {}) is None and serving_token("127.0.0.1", {UI_TOKEN_ENV: ""}) is None
    assert serving_token("0.0.0.0", {UI_TOKEN_ENV: secret}) == secret
    assert serving_token("::1", {UI_TOKEN_ENV: secret}) == secret  # set: required on loopback too
    with pytest.raises(PrefsmithError, match="reachable from other machines"):
        serving_token("0.0.0.0", {})
    with pytest.raises(PrefsmithError, match="shorter than 16 characters"):
        serving_token("localhost", {UI_TOKEN_ENV: secret[:-1]})
