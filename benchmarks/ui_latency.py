"""Page latency of the web UI (`prefsmith ui`) over PostgreSQL holding 10,000 and 1,000,000 pairs: p50 and p95
of real HTTP requests to the pairs list (first page, a page ~20 pages deep, filtered by status, by run, by
text), to a pair's page, to the runs list and to a run's page.

    python benchmarks/ui_latency.py [--pairs 10000 1000000] [--requests 50] [--keep-db]

For each size the benchmark creates a database of its own on the server at --admin-url, migrates it to the
head schema (`storage.migrate.upgrade`), fills it in server-side SQL (`INSERT ... SELECT ... FROM
generate_series`, foreign-key triggers off while filling, then VACUUM ANALYZE), serves `ui.app` with uvicorn
on a loopback port in a thread of this process and times sequential requests with httpx (keep-alive, after
warm-up requests). The database is dropped at the end, also on failure, unless --keep-db.

The data: N pairs are N rounds, one pair per round; 10 % of episodes play two rounds (a rejected pair, then an
accepted one), so there are 0.9 N episodes. 4 runs follow each other in time and play the same N/4 prompts
(sources builtin:arithmetic, builtin:gsm8k, file:x.jsonl, hf:openai/gsm8k); each round has 2-4 candidates of
100-400 characters, a judgment each, 1-2 `reference_answer` tool verdicts each; pairs are spread over 30
days; ~85 % accepted, half of those by verified tools (reward score NULL, as the pipeline stores them), the
others by a reward score 7-10; 1 % of pairs have a review. "Text search" looks for a word in ~4 % of pairs;
"no match" for a word in none (the worst case: every pair is read).

A case whose p50 is over the 300 ms target gets one more request traced statement by statement, and the
slowest statement of it is run under EXPLAIN (ANALYZE, BUFFERS); the plans go to the JSON file. Percentiles
are nearest-rank. A slow case stops after --case-seconds (at least 5 requests); the table says how many ran.
Results: benchmarks/results/ui_latency.md and .json.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import random
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from make_results import RESULTS_DIR, commit, machine, shown_command  # noqa: E402 (benchmarks/ is on sys.path)

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_MS = 300.0
RUNS = 4
SEARCH_WORD = "pelican"  # in ~2 % of candidate texts
ABSENT_WORD = "zyzzogeton"  # in none
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Running text the candidates are cut from (no SEARCH_WORD, no ABSENT_WORD in it).
CORPUS = (
    "First I write the two numbers one above the other so that the units line up, then I add the units "
    "column and carry one to the tens when the sum is ten or more. The tens column comes next, with the "
    "carried one added in, and the hundreds after it. To check the result I subtract one of the numbers "
    "from the sum and compare what is left with the other number; if they agree the addition was right. "
    "Another way to check is to round both numbers to the nearest ten, add the rounded values and see "
    "whether the exact sum is close to the estimate. Breaking the problem into smaller parts also helps: "
    "add the hundreds, then the tens, then the units, and combine the three partial sums at the end. "
    "When a word problem hides the numbers, I first underline the quantities and the question, decide "
    "which operation the question asks for, and write the equation before computing anything. Units "
    "matter too: apples and oranges are both fruit, but minutes and hours must be converted first. "
    "Finally I reread the question to make sure the number I give answers what was asked, not a step."
)


def fill_statements(n: int) -> list[tuple[str, str]]:
    """(table, SQL) that fill an empty, migrated database with `n` pairs; run in one session, in order."""
    q = math.ceil(n / RUNS)  # prompts: every run plays the same q prompts
    corpus = CORPUS.replace("'", "''")
    base = "timestamptz '2025-01-01 00:00:00+00'"
    span_s = 30 * 86400
    # Helpers in pg_temp: gone with the session. h() is a cheap deterministic hash of (seed, salt).
    helpers = f"""
CREATE FUNCTION pg_temp.h(seed bigint, salt int) RETURNS bigint LANGUAGE sql IMMUTABLE AS
  $$ SELECT ((seed * 2654435761 + salt * 40503 + 12345) % 1000003) $$;
CREATE FUNCTION pg_temp.answer(seed bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT 'Let me work through this step by step. '
    || substr('{corpus}', 1 + (pg_temp.h(seed, 1) % 600)::int, 80 + (pg_temp.h(seed, 2) % 300)::int)
    || CASE WHEN pg_temp.h(seed, 3) % 50 = 7 THEN ' A pelican could count these on its beak.' ELSE '' END
    || ' So the answer is ' || (pg_temp.h(seed, 4) % 2000)::text || '.' $$;
CREATE FUNCTION pg_temp.ep(i bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS
  $$ SELECT CASE WHEN i % 10 = 1 THEN i - 1 ELSE i END $$;
CREATE FUNCTION pg_temp.eid(k bigint) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT md5('episode:' || k) || md5('episode/' || k) $$;
CREATE FUNCTION pg_temp.pid(p bigint) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT md5('prompt:' || p) || md5('prompt/' || p) $$;
CREATE FUNCTION pg_temp.run(k bigint) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT 'bench-run-' || (k * {RUNS} / {n}) $$;
CREATE FUNCTION pg_temp.ts(i bigint) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS
  $$ SELECT {base} + (i * {span_s}.0 / {n}) * interval '1 second' $$;
CREATE FUNCTION pg_temp.accepted(i bigint) RETURNS boolean LANGUAGE sql IMMUTABLE AS
  $$ SELECT NOT (i % 10 = 0 OR i % 20 = 5) $$;
CREATE FUNCTION pg_temp.verified(i bigint) RETURNS boolean LANGUAGE sql IMMUTABLE AS
  $$ SELECT pg_temp.accepted(i) AND pg_temp.h(i, 5) % 2 = 0 $$;
CREATE FUNCTION pg_temp.ncand(i bigint) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT (2 + i % 3)::int $$;
CREATE FUNCTION pg_temp.chosen(i bigint) RETURNS int LANGUAGE sql IMMUTABLE AS
  $$ SELECT (pg_temp.h(i, 6) % pg_temp.ncand(i))::int $$;
CREATE FUNCTION pg_temp.rejected(i bigint) RETURNS int LANGUAGE sql IMMUTABLE AS
  $$ SELECT ((pg_temp.chosen(i) + 1 + pg_temp.h(i, 7) % (pg_temp.ncand(i) - 1)) % pg_temp.ncand(i))::int $$;
CREATE FUNCTION pg_temp.verdict(i bigint, g int) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN pg_temp.verified(i) THEN g = pg_temp.chosen(i) ELSE pg_temp.h(i * 4 + g, 8) % 2 = 0 END $$;
CREATE FUNCTION pg_temp.score(i bigint, g int) RETURNS float LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN g = pg_temp.chosen(i) THEN 7 + pg_temp.h(i * 4 + g, 9) % 30 / 10.0
              ELSE pg_temp.h(i * 4 + g, 9) % 60 / 10.0 END $$;
"""
    target_v = "CASE WHEN i % 10 = 1 OR i % 3 = 0 THEN 1 ELSE 0 END"
    return [
        ("helpers", helpers),
        (
            "runs",
            f"""
INSERT INTO runs (id, config_hash, config, status, metrics, current_target_prompt_version,
                  current_judge_prompt_version, created_at, updated_at)
SELECT 'bench-run-' || r, md5('config' || r),
       json_build_object('game', json_build_object('rounds', 2, 'candidates', 4, 'accept_threshold', 7),
                         'models', json_build_object('target', '{MODEL}', 'judge', '{MODEL}', 'reward', '{MODEL}'),
                         'prompts', json_build_object('source', 'builtin:arithmetic', 'n', {q})),
       'completed', json_build_object('pairs_per_min', 12.5 + r, 'accept_rate', 0.85),
       1, 0, {base} + r * interval '{span_s // RUNS} seconds' - interval '1 minute',
       {base} + (r + 1) * interval '{span_s // RUNS} seconds'
FROM generate_series(0, {RUNS - 1}) r""",
        ),
        (
            "prompt_versions",
            f"""
INSERT INTO prompt_versions (run_id, role, version, text, parent_version, critique, created_at)
SELECT 'bench-run-' || r, v.role, v.version,
       'You are a careful assistant. Solve the problem step by step, show each step of your reasoning, '
         || 'check the result another way, and end with a line "So the answer is N." (' || v.role || ' v'
         || v.version || ')',
       v.parent, v.critique, {base} + r * interval '{span_s // RUNS} seconds' + v.version * interval '1 hour'
FROM generate_series(0, {RUNS - 1}) r,
     (VALUES ('target', 0, NULL::int, NULL::text),
             ('target', 1, 0, 'The answers skipped the check; ask for a second way to verify the sum.'),
             ('judge', 0, NULL::int, NULL::text)) v(role, version, parent, critique)""",
        ),
        (
            "prompts",
            f"""
INSERT INTO prompts (id, messages, source, meta, created_at)
SELECT pg_temp.pid(p),
       json_build_array(
         json_build_object('role', 'system', 'content', 'You are a careful assistant that shows its work.'),
         json_build_object('role', 'user', 'content',
           'What is ' || (p * 7919 % 1000) || ' + ' || (p * 104729 % 1000) || '? '
           || substr('{corpus}', 1 + (pg_temp.h(p, 11) % 400)::int, 40 + (pg_temp.h(p, 12) % 120)::int))),
       CASE WHEN p % 10 < 6 THEN 'builtin:arithmetic' WHEN p % 10 < 8 THEN 'builtin:gsm8k'
            WHEN p % 10 = 8 THEN 'file:x.jsonl' ELSE 'hf:openai/gsm8k' END,
       json_build_object('answer', ((p * 7919 % 1000) + (p * 104729 % 1000))::text, 'line', p),
       {base} - interval '1 day'
FROM generate_series(0, {q - 1}) p""",
        ),
        (
            "episodes",
            f"""
INSERT INTO episodes (id, run_id, prompt_id, status, rounds_played, failure_reason, created_at, finished_at)
SELECT pg_temp.eid(k), pg_temp.run(k), pg_temp.pid(k % {q}),
       CASE WHEN k % 10 = 0 AND k + 1 < {n} THEN 'accepted' WHEN pg_temp.accepted(k) THEN 'accepted'
            ELSE 'gave_up' END,
       CASE WHEN k % 10 = 0 AND k + 1 < {n} THEN 2 ELSE 1 END, NULL, pg_temp.ts(k) - interval '20 seconds',
       pg_temp.ts(CASE WHEN k % 10 = 0 AND k + 1 < {n} THEN k + 1 ELSE k END)
FROM generate_series(0, {n - 1}) k WHERE k % 10 <> 1""",
        ),
        (
            "rounds",
            f"""
INSERT INTO rounds (id, episode_id, "index", target_prompt_version, judge_prompt_version, outcome,
                    failure_reason, details, created_at)
SELECT i + 1, pg_temp.eid(pg_temp.ep(i)), CASE WHEN i % 10 = 1 THEN 1 ELSE 0 END, {target_v}, 0,
       CASE WHEN pg_temp.accepted(i) THEN 'accepted' ELSE 'rejected' END, NULL,
       json_build_object('tools', json_build_array('reference_answer'), 'ranking', 'judge scores',
                         'verdicts_decide', pg_temp.verified(i),
                         'reward_raw', CASE WHEN pg_temp.verified(i) THEN NULL ELSE
                           '{{"score": ' || (pg_temp.h(i, 10) % 100 / 10.0) || ', "analysis": "the chosen '
                           || 'answer is correct and explains its check"}}' END),
       pg_temp.ts(i)
FROM generate_series(0, {n - 1}) i;
SELECT setval(pg_get_serial_sequence('rounds', 'id'), {n})""",
        ),
        (
            "generations",
            f"""
INSERT INTO generations (round_id, "index", text, finish_reason, prompt_tokens, completion_tokens, model_id,
                         sampling)
SELECT i + 1, g, pg_temp.answer(i * 4 + g), CASE WHEN (i + g) % 17 = 0 THEN 'length' ELSE 'stop' END,
       40 + (i % 30)::int, 60 + ((i * 4 + g) % 200)::int, '{MODEL}',
       json_build_object('temperature', 0.8, 'top_p', 0.95, 'max_tokens', 256, 'seed', i * 4 + g)
FROM generate_series(0, {n - 1}) i, generate_series(0, pg_temp.ncand(i) - 1) g""",
        ),
        (
            "judgments",
            f"""
INSERT INTO judgments (round_id, generation_index, score, rationale, verified, raw_output, model_id)
SELECT i + 1, g, pg_temp.score(i, g),
       CASE WHEN pg_temp.verdict(i, g) THEN 'The steps are shown, the check by subtraction agrees with the '
              || 'sum, and the final line gives the number the question asks for.'
            ELSE 'The carry in the tens column was dropped, so the sum is off; the answer does not check '
              || 'against the reference.' END,
       pg_temp.verdict(i, g),
       '{{"score": ' || pg_temp.score(i, g) || ', "rationale": "see above"}}', '{MODEL}'
FROM generate_series(0, {n - 1}) i, generate_series(0, pg_temp.ncand(i) - 1) g""",
        ),
        (
            "tool_evidence",
            f"""
INSERT INTO tool_evidence (round_id, seq, generation_index, tool, arguments, result, verdict, error)
SELECT i + 1, g * 2 + e, g, 'reference_answer',
       json_build_object('answer', (pg_temp.h(i * 4 + g, 4) % 2000)::text, 'expected',
                         (pg_temp.h(i, 13) % 2000)::text, 'attempt', e),
       json_build_object('match', pg_temp.verdict(i, g), 'normalised', (pg_temp.h(i * 4 + g, 4) % 2000)::text,
                         'note', 'compared the last number of the answer with the reference answer'),
       pg_temp.verdict(i, g), NULL
FROM generate_series(0, {n - 1}) i, generate_series(0, pg_temp.ncand(i) - 1) g,
     generate_series(0, ((i + g) % 2)::int) e""",
        ),
        (
            "preference_pairs",
            f"""
INSERT INTO preference_pairs (id, run_id, episode_id, round_id, prompt_id, chosen_index, rejected_index, chosen,
    rejected, chosen_score, rejected_score, reward_score, reward_analysis, accepted, accepted_by, round_index,
    target_prompt_version, judge_prompt_version, target_model, judge_model, reward_model, created_at)
SELECT md5('pair:' || i) || md5('pair/' || i), pg_temp.run(pg_temp.ep(i)), pg_temp.eid(pg_temp.ep(i)), i + 1,
       pg_temp.pid(pg_temp.ep(i) % {q}), pg_temp.chosen(i), pg_temp.rejected(i),
       pg_temp.answer(i * 4 + pg_temp.chosen(i)), pg_temp.answer(i * 4 + pg_temp.rejected(i)),
       pg_temp.score(i, pg_temp.chosen(i)), pg_temp.score(i, pg_temp.rejected(i)),
       CASE WHEN pg_temp.verified(i) THEN NULL WHEN pg_temp.accepted(i) THEN 7 + pg_temp.h(i, 10) % 30 / 10.0
            ELSE pg_temp.h(i, 10) % 70 / 10.0 END,
       CASE WHEN pg_temp.verified(i) THEN ''
            ELSE 'The chosen answer carries correctly and checks its sum by subtraction; the rejected one '
              || 'drops a carry in the tens column and states a number that does not match.' END,
       pg_temp.accepted(i),
       CASE WHEN pg_temp.verified(i) THEN 'verified' WHEN pg_temp.accepted(i) THEN 'reward' END,
       CASE WHEN i % 10 = 1 THEN 1 ELSE 0 END, {target_v}, 0, '{MODEL}', '{MODEL}', '{MODEL}', pg_temp.ts(i)
FROM generate_series(0, {n - 1}) i""",
        ),
        (
            "pair_reviews",
            f"""
INSERT INTO pair_reviews (pair_id, decision, note, reviewer, created_at)
SELECT md5('pair:' || i) || md5('pair/' || i),
       (ARRAY['approved', 'approved', 'rejected', 'flipped'])[1 + (pg_temp.h(i, 14) % 4)::int],
       'checked the arithmetic by hand', 'reviewer-' || (i % 3), pg_temp.ts(i) + interval '3 days'
FROM generate_series(0, {n - 1}, 100) i""",
        ),
    ]


@contextmanager
def bench_database(admin_url: str, keep: bool) -> Iterator[str]:
    """A new, empty database on the admin URL's server; dropped afterwards (also on failure) unless `keep`."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"prefsmith_bench_ui_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if keep:
            print(f"kept database {name}", file=sys.stderr, flush=True)
        else:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def fill(url: str, n: int) -> dict[str, Any]:
    """Fill the database with `n` pairs; seconds per table, rows per table and the database's size."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection  # psycopg itself: statements without parameters go as they are
        pg.autocommit = True
        # No foreign-key triggers while filling (the data is consistent by construction); superuser only.
        pg.execute("SET session_replication_role = replica")
        pg.execute("SET synchronous_commit = off")
        pg.execute("SET maintenance_work_mem = '256MB'")
        for table, sql in fill_statements(n):
            t0 = time.perf_counter()
            pg.execute(sql)
            seconds[table] = round(time.perf_counter() - t0, 1)
            print(f"  {n:,} pairs: {table} in {seconds[table]} s", file=sys.stderr, flush=True)
        pg.execute("SET session_replication_role = origin")
        t0 = time.perf_counter()
        pg.execute("VACUUM (ANALYZE)")
        seconds["vacuum analyze"] = round(time.perf_counter() - t0, 1)
        tables = ["runs", "prompts", "episodes", "rounds", "generations", "judgments", "tool_evidence",
                  "preference_pairs", "pair_reviews"]  # fmt: skip
        rows = {t: pg.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
        size = pg.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    finally:
        raw.close()
        engine.dispose()
    assert rows["preference_pairs"] == n, rows
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_by_step": seconds,
        "rows": rows,
        "database_mb": round(size / 2**20),
    }


@contextmanager
def serve(engine: Any) -> Iterator[str]:
    """`ui.app` on http://127.0.0.1:PORT in a thread of this process for the duration of the block."""
    import socket

    import uvicorn

    from ui.app import UiSettings, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(UiSettings(engine)), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
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


class Tracer:
    """Records each SQL statement the engine runs (text, parameters, seconds) while `on`."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.on = False
        self.statements: list[tuple[str, Any, float]] = []
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if self.on:
            self.statements.append((statement, parameters, time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())))


def get(client: Any, path: str) -> tuple[float, str]:
    """GET `path`: milliseconds and the body; anything but 200 fails the benchmark."""
    t0 = time.perf_counter()
    response = client.get(path)
    ms = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:500]}")
    return ms, response.text


def next_page(body: str) -> str | None:
    """The 'older »' link of a pairs list, None on the last page."""
    found = re.search(r'id="next-page" href="([^"]+)"', body)
    return html.unescape(found.group(1)) if found else None


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def explain(engine: Any, statement: str, parameters: Any) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of one statement as the app ran it."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        raw.rollback()
        return plan
    finally:
        raw.close()


def measure(url: str, n: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case against the UI on the database at `url`; one result per case."""
    import httpx
    from sqlalchemy import text

    from storage.migrate import open_database

    engine = open_database(url)
    tracer = Tracer(engine)
    rng = random.Random(args.seed)
    try:
        sample = rng.sample(range(n), min(n, args.requests + args.warmup + 5))
        with engine.connect() as conn:
            ids = dict(
                conn.execute(
                    text("SELECT round_id, id FROM preference_pairs WHERE round_id = ANY(:r)"),
                    {"r": [i + 1 for i in sample]},
                ).all()
            )
        pair_ids = [ids[i + 1] for i in sample]
        results = []
        with serve(engine) as base, httpx.Client(base_url=base, timeout=300) as client:
            deep, page = "/pairs", 1
            while page < 21:  # follow 'older »' link by link, as a reader would, to page 21 (or the last)
                older = next_page(get(client, deep)[1])
                if older is None:
                    break
                deep, page = older, page + 1
            run = f"bench-run-{min(1, RUNS - 1)}"
            # (name, path of the k-th request, whether the 300 ms target is about it)
            cases: list[tuple[str, Any, bool]] = [
                ("pairs list, first page", lambda k: "/pairs", True),
                (f"pairs list, page {page}", lambda k: deep, True),
                ("pairs list, status=verified", lambda k: "/pairs?status=verified", True),
                ("pairs list, run + accepted", lambda k: f"/pairs?run={run}&status=accepted", True),
                ("pair page", lambda k: f"/pairs/{pair_ids[k % len(pair_ids)]}", True),
                (f"text search q={SEARCH_WORD}", lambda k: f"/pairs?q={SEARCH_WORD}", False),
                (f"text search q={ABSENT_WORD} (no match)", lambda k: f"/pairs?q={ABSENT_WORD}", False),
                ("runs page /", lambda k: "/", False),
                (f"run page /runs/{run}", lambda k: f"/runs/{run}", False),
            ]
            for name, path_of, target in cases:
                k = 0
                first, _ = get(client, path_of(k))
                k += 1
                for _ in range(args.warmup - 1 if first < 2000 else 0):
                    get(client, path_of(k))
                    k += 1
                times: list[float] = []
                started = time.perf_counter()
                while len(times) < args.requests:
                    times.append(get(client, path_of(k))[0])
                    k += 1
                    if len(times) >= 5 and time.perf_counter() - started > args.case_seconds:
                        break
                result: dict[str, Any] = {
                    "pairs": n,
                    "case": name,
                    "path": path_of(0),
                    "p50_ms": round(statistics.median(times), 1),
                    "p95_ms": round(nearest_rank(times, 95), 1),
                    "max_ms": round(max(times), 1),
                    "requests": len(times),
                    "target": target,
                }
                if result["p50_ms"] > TARGET_MS:
                    tracer.statements.clear()
                    tracer.on = True
                    try:
                        get(client, path_of(k))
                    finally:
                        tracer.on = False
                    slowest = sorted(tracer.statements, key=lambda s: s[2], reverse=True)[:3]
                    result["slowest_sql"] = [
                        {"ms": round(s * 1000, 1), "statement": " ".join(sql.split()), "parameters": repr(p)}
                        for sql, p, s in slowest
                    ]
                    if slowest:
                        result["explain"] = explain(engine, slowest[0][0], slowest[0][1])
                        print(f"\n{n:,} pairs, {name}: slowest statement {slowest[0][2] * 1000:.0f} ms\n"
                              f"{result['slowest_sql'][0]['statement']}\n{result['explain']}\n",
                              file=sys.stderr, flush=True)  # fmt: skip
                print(f"  {n:,} pairs, {name}: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms "
                      f"({result['requests']} requests)", file=sys.stderr, flush=True)  # fmt: skip
                results.append(result)
    finally:
        engine.dispose()
    return results


def render(results: list[dict[str, Any]], fills: dict[int, dict[str, Any]]) -> list[str]:
    """The printed figures: latency table, fill table, the target verdict, slow statements."""
    lines = ["| pairs | case | p50 ms | p95 ms | requests |", "|---:|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['pairs']:,} | {r['case']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['requests']} |")
    lines += ["", "| pairs | fill s | of which VACUUM ANALYZE s | episodes | generations | tool evidence | "
              "database MB |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for n, f in fills.items():
        rows = f["rows"]
        lines.append(
            f"| {n:,} | {f['seconds']:.0f} | {f['seconds_by_step']['vacuum analyze']:.0f} | {rows['episodes']:,} "
            f"| {rows['generations']:,} | {rows['tool_evidence']:,} | {f['database_mb']:,} |"
        )
    largest = max(fills)
    checked = [r for r in results if r["pairs"] == largest and r["target"]]
    over = [r for r in checked if r["p95_ms"] > TARGET_MS]
    lines.append("")
    if over:
        names = ", ".join(f"{r['case']} (p95 {r['p95_ms']:.0f} ms)" for r in over)
        lines.append(f"Target p95 ≤ {TARGET_MS:.0f} ms for the pairs list and a pair's page at {largest:,} pairs: "
                     f"does NOT hold: {names}.")  # fmt: skip
    else:
        lines.append(f"Target p95 ≤ {TARGET_MS:.0f} ms for the pairs list and a pair's page at {largest:,} pairs: "
                     "holds.")  # fmt: skip
    for r in results:
        if r.get("slowest_sql"):
            s = r["slowest_sql"][0]
            lines.append(f"- {r['pairs']:,} pairs, {r['case']}: slowest statement of one request {s['ms']:.0f} ms: "
                         f"`{s['statement'][:200]}`")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[10_000, 1_000_000], help="database sizes")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests before each case")
    parser.add_argument("--case-seconds", type=float, default=30.0, help="stop a case after this long (≥5 requests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair pages' random choice")
    parser.add_argument("--admin-url", default=ADMIN_URL, help="a database on the server; new ones are made beside it")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the databases (their names are printed)")
    args = parser.parse_args()

    from storage.migrate import upgrade

    started_at = datetime.now(UTC)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    fills: dict[int, dict[str, Any]] = {}
    for n in args.pairs:
        with bench_database(args.admin_url, args.keep_db) as url:
            upgrade(url)
            print(f"filling {n:,} pairs ...", file=sys.stderr, flush=True)
            fills[n] = fill(url, n)
            print(f"filled {n:,} pairs in {fills[n]['seconds']} s ({fills[n]['database_mb']} MB)", flush=True)
            results += measure(url, n, args)
    command = shown_command([sys.executable, "benchmarks/ui_latency.py", *sys.argv[1:]])
    where = machine()
    lines = render(results, fills)
    print("\n".join(lines), flush=True)
    seconds = time.perf_counter() - started
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    section = [
        f"<!-- bench: name=ui_latency date={started_at:%Y-%m-%d} -->",
        f"Measured {started_at:%Y-%m-%d %H:%M} UTC on {where}; commit {commit()}; {took}. "
        "Written by `benchmarks/ui_latency.py`.",
        "",
        "```bash",
        command,
        "```",
        "",
        *lines,
        "",
    ]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "ui_latency.md").write_text("\n".join(section), encoding="utf-8")
    payload = {
        "command": command,
        "machine": where,
        "commit": commit(),
        "measured_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds),
        "target_ms": TARGET_MS,
        "fills": {str(n): f for n, f in fills.items()},
        "results": results,
    }
    (RESULTS_DIR / "ui_latency.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
