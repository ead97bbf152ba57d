"""`prefsmith ui` page latency on PostgreSQL with many pairs: the pairs list (first page, a page 20 deep,
filtered) and a pair's page, at 10,000 and 1,000,000 pairs, plus text search and the runs page.

    python benchmarks/ui_latency.py [--pairs 10000 1000000] [--requests 40]

For each size a database of its own is made on the PostgreSQL server at 127.0.0.1:5432 (or
$PREFSMITH_TEST_PG), migrated, and filled with server-side SQL: 4 runs, one episode per pair with one round
of two candidates, a judgment and a tool verdict each, and a pair (accepted for 4 in 5, half of those
verified), made one second apart. `prefsmith ui` serves it as its own process; requests are made one at a
time over HTTP after warm-up, each answer must be 200. Reports p50 / p95 milliseconds per case. The
database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ADMIN_URL = os.environ.get("PREFSMITH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RUNS = 4
TARGET_MS = 300

FILL = [
    """INSERT INTO runs (id, config_hash, config, status, metrics, current_target_prompt_version,
           current_judge_prompt_version, created_at, updated_at)
       SELECT 'bench-' || r, md5('c' || r) || md5('d' || r), '{"game": {"candidates": 2}}'::json, 'completed',
              json_build_object('pairs_per_min', 1.5, 'target_tokens_per_s', 60.0), 1, 0,
              timestamptz '2026-01-01 00:00:00+00', now()
       FROM generate_series(0, :runs - 1) r""",
    """INSERT INTO prompt_versions (run_id, role, version, text, parent_version, critique, created_at)
       SELECT 'bench-' || r, v.role, v.version, v.text, v.parent, v.critique, timestamptz '2026-01-01 00:00:00+00'
       FROM generate_series(0, :runs - 1) r,
            (VALUES ('target', 0, 'You are a helpful assistant.', NULL, NULL),
                    ('target', 1, 'You are a helpful assistant. Check your arithmetic.', 0, 'answers were off by one'),
                    ('judge', 0, 'You are a strict judge.', NULL, NULL)) AS v(role, version, text, parent, critique)""",
    """INSERT INTO prompts (id, messages, source, meta, created_at)
       SELECT md5('p' || i) || md5('q' || i),
              json_build_array(json_build_object('role', 'user', 'content',
                  'What is ' || i || ' + ' || (i % 97) || '? Answer with the number.')),
              CASE WHEN i % 3 = 0 THEN 'builtin:arithmetic' ELSE 'file:prompts.jsonl' END,
              json_build_object('answer', i + i % 97), timestamptz '2026-01-01 00:00:00+00'
       FROM generate_series(0, :prompts - 1) i""",
    """INSERT INTO episodes (id, run_id, prompt_id, status, rounds_played, created_at, finished_at)
       SELECT md5('e' || k) || md5('f' || k), 'bench-' || (k % :runs),
              md5('p' || (k / :runs)) || md5('q' || (k / :runs)),
              CASE WHEN k % 5 = 0 THEN 'gave_up' ELSE 'accepted' END, 1,
              timestamptz '2026-01-01 00:00:00+00' + k * interval '1 second',
              timestamptz '2026-01-01 00:00:00+00' + k * interval '1 second'
       FROM generate_series(0, :n - 1) k""",
    """INSERT INTO rounds (id, episode_id, "index", target_prompt_version, judge_prompt_version, outcome, details,
           created_at)
       SELECT k + 1, md5('e' || k) || md5('f' || k), 0, 1, 0,
              CASE WHEN k % 5 = 0 THEN 'rejected' ELSE 'accepted' END, '{"ranking": "verdicts"}'::json,
              timestamptz '2026-01-01 00:00:00+00' + k * interval '1 second'
       FROM generate_series(0, :n - 1) k""",
    "SELECT setval('rounds_id_seq', :n + 1)",
    """INSERT INTO generations (id, round_id, "index", text, finish_reason, prompt_tokens, completion_tokens, model_id,
           sampling)
       SELECT 2 * k + g + 1, k + 1, g,
              CASE WHEN g = 0 THEN 'The sum is ' || (k / :runs + (k / :runs) % 97) || '. ' ELSE 'The sum is '
                   || (k / :runs + (k / :runs) % 97 + 1) || '. ' END
              || repeat('First add the tens, then the units, and check the carry. ', 2 + k % 5)
              || CASE WHEN k % 100 = 0 THEN 'seventeen' ELSE '' END,
              'stop', 30, 40 + k % 20, 'smollm2-135m-instruct', '{"temperature": 0.8}'::json
       FROM generate_series(0, :n - 1) k, generate_series(0, 1) g""",
    "SELECT setval('generations_id_seq', 2 * :n + 1)",
    """INSERT INTO judgments (id, round_id, generation_index, score, rationale, verified, raw_output, model_id)
       SELECT 2 * k + g + 1, k + 1, g, CASE WHEN g = 0 THEN 9 ELSE 2 END, 'the tool verdict decides', g = 0,
              NULL, 'smollm2-135m-instruct'
       FROM generate_series(0, :n - 1) k, generate_series(0, 1) g""",
    "SELECT setval('judgments_id_seq', 2 * :n + 1)",
    """INSERT INTO tool_evidence (id, round_id, seq, generation_index, tool, arguments, result, verdict)
       SELECT 2 * k + g + 1, k + 1, g, g, 'reference_answer',
              json_build_object('answer', k / :runs + (k / :runs) % 97),
              json_build_object('extracted', k / :runs + (k / :runs) % 97 + g, 'match', g = 0), g = 0
       FROM generate_series(0, :n - 1) k, generate_series(0, 1) g""",
    "SELECT setval('tool_evidence_id_seq', 2 * :n + 1)",
    """INSERT INTO preference_pairs (id, run_id, episode_id, round_id, prompt_id, chosen_index, rejected_index, chosen,
           rejected, chosen_score, rejected_score, reward_score, reward_analysis, accepted, accepted_by, round_index,
           target_prompt_version, judge_prompt_version, target_model, judge_model, reward_model, created_at)
       SELECT md5('x' || k) || md5('y' || k), 'bench-' || (k % :runs), md5('e' || k) || md5('f' || k), k + 1,
              md5('p' || (k / :runs)) || md5('q' || (k / :runs)), 0, 1, g0.text, g1.text, 9, 2,
              CASE WHEN k % 5 = 0 THEN 4 WHEN k % 2 = 0 THEN NULL ELSE 8 + k % 3 END,
              'the chosen answer is right', k % 5 <> 0,
              CASE WHEN k % 5 = 0 THEN NULL WHEN k % 2 = 0 THEN 'verified' ELSE 'reward' END, 0, 1, 0,
              'smollm2-135m-instruct', 'smollm2-135m-instruct', 'smollm2-135m-instruct',
              timestamptz '2026-01-01 00:00:00+00' + k * interval '1 second'
       FROM generate_series(0, :n - 1) k
       JOIN generations g0 ON g0.id = 2 * k + 1
       JOIN generations g1 ON g1.id = 2 * k + 2""",
    "ANALYZE",
]


def make_database(n: int) -> str:
    """A migrated database filled with n pairs; returns its URL."""
    from storage.migrate import upgrade

    name = f"prefsmith_bench_ui_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        params = {"n": n, "runs": RUNS, "prompts": (n + RUNS - 1) // RUNS}
        with engine.connect() as conn:
            for statement in FILL:
                conn.execute(text(statement), params)
        engine.dispose()
    except BaseException:
        drop_database(url)
        raise
    return url


def drop_database(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PREFSMITH_UI_TOKEN", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "ui", "--db", url, "--port", str(port), "--read-only"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.2)
        if process.poll() is not None:
            break
    process.kill()
    raise SystemExit(f"prefsmith ui did not start: {process.stderr.read() if process.stderr else ''}")


def timed(client: httpx.Client, paths: list[str], warmup: int = 3) -> list[float]:
    for path in paths[:warmup]:
        client.get(path)
    times = []
    for path in paths:
        started = time.perf_counter()
        reply = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if reply.status_code != 200:
            raise SystemExit(f"GET {path} answered {reply.status_code}")
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def measure(url: str, requests: int, seed: int = 0) -> dict[str, list[float]]:
    process, base = start_ui(url)
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            pair_ids = re.findall(r'<a href="/pairs/([0-9a-f]{64})">', client.get("/pairs").text)
            path = "/pairs"
            for _ in range(20):  # the cursor of the page 20 deep, followed link by link as a reader would
                found = re.search(r'id="next-page" href="([^"]+)"', client.get(path).text)
                if not found:
                    break
                path = found.group(1).replace("&amp;", "&")
                pair_ids += re.findall(r'<a href="/pairs/([0-9a-f]{64})">', client.get(path).text)
            rng = random.Random(seed)
            cases = {
                "pairs list, first page": ["/pairs"] * requests,
                "pairs list, 20 pages deep": [path] * requests,
                "pairs list, verified only": ["/pairs?status=verified"] * requests,
                "pairs list, one run's accepted": ["/pairs?run=bench-1&status=accepted"] * requests,
                "pairs list, reward 8 to 9": ["/pairs?min_score=8&max_score=9"] * requests,
                "a pair's page": [f"/pairs/{rng.choice(pair_ids)}" for _ in range(requests)],
                "text search (rare word)": ["/pairs?q=seventeen"] * max(requests // 4, 5),
                "runs page": ["/"] * max(requests // 4, 5),
            }
            return {case: timed(client, paths) for case, paths in cases.items()}
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--keep-db", action="store_true", help="Leave the databases for inspection.")
    args = parser.parse_args()
    results = {}
    print(f"{'pairs':>10}  {'case':<32}{'p50 ms':>9}{'p95 ms':>9}{'requests':>10}")
    for n in args.pairs:
        started = time.perf_counter()
        url = make_database(n)
        fill_s = time.perf_counter() - started
        try:
            timings = measure(url, args.requests)
        finally:
            if not args.keep_db:
                drop_database(url)
        results[n] = {"fill_seconds": round(fill_s, 1)} | {
            case: {"p50_ms": round(statistics.median(t), 1), "p95_ms": round(p95(t), 1), "requests": len(t)}
            for case, t in timings.items()
        }
        for case, r in results[n].items():
            if case != "fill_seconds":
                print(f"{n:>10,}  {case:<32}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['requests']:>10}")
        print(f"{n:>10,}  (database filled in {fill_s:.0f} s)")
    largest = results[max(results)]
    held = all(
        largest[c]["p95_ms"] < TARGET_MS
        for c in largest
        if c != "fill_seconds" and (c.startswith("pairs list") or c == "a pair's page")
    )
    print(f"pairs lists and pair page under {TARGET_MS} ms (p95) at {max(results):,} pairs: {'yes' if held else 'no'}")
    print(json.dumps({"settings": vars(args), "results": results}))


if __name__ == "__main__":
    main()
