"""Fault injection on the real stack: `prefsmith synthesize` processes (each with its own local Ray), the
SmolLM2 engine, PostgreSQL. Episodes of two rounds, so a run is cut inside episodes as well as between them.

- kill -9 at five seeded moments, then the same command again → the same episodes, rounds, candidates,
  pairs and prompt versions as an uninterrupted run of it, nothing twice;
  While a synthesizer plays the run a second one is refused, naming it, and after each kill the next one
  takes the run over;
- PostgreSQL connections terminated mid-run → the run goes on; the database away for longer than
  `storage.retry_s` → the run stops (exit 75, `interrupted`, no episode failed for it), and a rerun makes
  it hold what the uninterrupted run holds;
- a tool that hangs: SIGTERM once, and twice, → the process exits within a bound, the run `interrupted`;
- episodes in a worker actor, and the vLLM engine: kill -9 and a rerun store every round once; the worker
  actor alone killed mid-run → it is replaced and the run completes holding what an uninterrupted run holds.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from storage.db import session_scope
from storage.migrate import open_database
from storage.models import Episode, Generation, PreferencePair, PromptVersion, Round, Run, RunLease
from tests.conftest import REPO
from tests.test_synthesis import EASY, _ray_pids, _stop_pids, write_prompts

pytestmark = [pytest.mark.model, pytest.mark.ray, pytest.mark.postgres]

ROUNDS = 2
TOOL_TIMEOUT_S = 6
# Two prompts: every scenario cuts a run between episodes, between rounds and inside a round already, and each
# `prefsmith synthesize` these tests start (about twenty) plays every prompt's rounds on one CPU thread.
PROMPTS = EASY[:2]


def _config(folder: Path, *, tools: str = "[reference_answer, calculator]") -> Path:
    prompts = folder / "prompts.jsonl"
    write_prompts(prompts, PROMPTS)
    config = folder / "faults.yaml"
    # τ = 10 makes most rounds rejected, so episodes play both rounds and the optimizer's rewrites are in use
    # (verdicts do not decide here: a verified pair would be accepted whatever τ says). Rounds whose verdicts
    # agree sample more steps (max_candidates), so a resumed run must draw the same steps again; each run's pass
    # rates start from its own candidates (prior_from_history off), not from the other runs this database holds.
    config.write_text(f"""
models:
  default: {{name: smollm2-135m-instruct, backend: transformers, dtype: float32, threads: 1}}
sampling: {{temperature: 1.0, top_p: 0.95, max_tokens: 10, seed: 1}}
game: {{candidates: 2, max_rounds: {ROUNDS}, accept_threshold: 10, verdicts_decide: false, max_candidates: 6,
        prior_from_history: false}}
tools: {{enabled: {tools}, call_timeout_s: {TOOL_TIMEOUT_S}}}
prompts: [{{path: {prompts}}}]
storage: {{lease_ttl_s: 6, retry_s: 30}}
ray: {{num_cpus: 2, episodes_in_flight: 1}}
""")
    return config


class Synthesizer:
    """One `prefsmith synthesize` process with a local Ray of its own, cleaned up by its PIDs."""

    def __init__(self, config: Path, url: str, run: str, *settings: str) -> None:
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="psfault-", dir="/tmp"))
        self.command = [sys.executable, "-m", "pipelines.cli", "synthesize", "--config", str(config), "--db", url,
                        "--run-name", run, *(f"--set={s}" for s in settings)]
        self.env = dict(os.environ, RAY_TMPDIR=str(self.ray_tmp), PYTHONPATH=str(REPO))
        self.proc: subprocess.Popen | None = None

    def start(self) -> Synthesizer:
        fd, self.log = tempfile.mkstemp(prefix="psfault-", suffix=".log")
        os.close(fd)
        with open(self.log, "a") as out:  # the summary (stdout) and the narration (stderr), read while it runs
            self.proc = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=out, stderr=out,
                                         start_new_session=True)
        return self

    def wait(self, timeout: float = 600) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.clean()

    def run(self, timeout: float = 600) -> int:
        return self.start().wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.clean()

    def err(self) -> str:
        return Path(self.log).read_text(errors="replace")

    def clean(self) -> None:
        _stop_pids(_ray_pids(str(self.ray_tmp)))
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _count(url: str, query) -> int:
    try:
        engine = open_database(url)
    except Exception:  # the run has not created its schema yet
        return 0
    try:
        with session_scope(engine) as session:
            return len(session.execute(query).all())
    except Exception:  # not created yet
        return 0
    finally:
        engine.dispose()


def _rounds(url: str, run: str) -> int:
    return _count(url, select(Round.id).join(Episode).where(Episode.run_id == run))


def _wait_for(condition, timeout: float, proc: Synthesizer | None = None, poll: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def snapshot(url: str, run: str) -> dict:
    """What a run holds, in terms that do not depend on its name or on when it was stored."""
    engine = open_database(url)
    with session_scope(engine) as session:
        episodes = session.execute(select(Episode).where(Episode.run_id == run)).scalars().all()
        held: dict = {"status": session.get(Run, run).status, "episodes": {}}
        for episode in episodes:
            query = select(Round).where(Round.episode_id == episode.id).order_by(Round.index)
            rounds = session.execute(query).scalars()
            played = []
            for r in rounds:
                texts = session.execute(
                    select(Generation.text).where(Generation.round_id == r.id).order_by(Generation.index)
                ).scalars().all()
                pair = session.execute(
                    select(PreferencePair.chosen, PreferencePair.rejected, PreferencePair.reward_score,
                           PreferencePair.accepted).where(PreferencePair.round_id == r.id)
                ).one_or_none()
                played.append((r.index, r.outcome, r.target_prompt_version, r.judge_prompt_version, tuple(texts),
                               tuple(pair) if pair else None, r.details.get("steps")))
            held["episodes"][episode.prompt_id] = (
                episode.status, episode.rounds_played, played, episode.samples, episode.passes, episode.pass_rate
            )
        held["prompt_versions"] = sorted(session.execute(
            select(PromptVersion.role, PromptVersion.version, PromptVersion.text).where(PromptVersion.run_id == run)
        ).all())
    engine.dispose()
    return held


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, small_model_path: Path, postgres_server_url: str
          ) -> Iterator[tuple[Path, str, dict]]:
    """A PostgreSQL database, the fault config, and what an uninterrupted run of it holds."""
    import uuid

    folder = tmp_path_factory.mktemp("faults")
    config = _config(folder)
    name = f"prefsmith_f_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        whole = Synthesizer(config, url, "whole")
        assert whole.run() == 0, whole.err()[-3000:]
        reference = snapshot(url, "whole")
        assert reference["status"] == "completed" and len(reference["episodes"]) == len(PROMPTS)
        assert any(len(rounds) == ROUNDS for _, _, rounds, *_ in reference["episodes"].values()), (
            "no episode played a second round: the test would not cut inside an episode"
        )
        assert any(r[-1] > 1 for _, _, rounds, *_ in reference["episodes"].values() for r in rounds), (
            "no round sampled a second step: the test would not resume stepped sampling"
        )
        yield config, url, reference
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_kill_minus_nine_at_five_seeded_moments_equals_an_uninterrupted_run(stack) -> None:
    """Also: while a synthesizer plays the run, a second one is refused naming it; after a kill, the next
    one takes the run over at once (its holder is a dead process of this machine)."""
    config, url, reference = stack
    total = sum(len(rounds) for _, _, rounds, *_ in reference["episodes"].values())
    rng = random.Random(20261201)
    # the i-th kill comes a seeded 0-4 s after the run has stored i/5 of the rounds: at start-up, inside
    # episodes (between their rounds and in the middle of one) and near the end
    moments = [(i * total // 5, round(rng.uniform(0, 4), 1)) for i in range(5)]
    cut_at, logs, refused = [], [], False
    for rounds_stored, extra_s in moments:
        synth = Synthesizer(config, url, "cut").start()
        reached = _wait_for(lambda k=rounds_stored: _rounds(url, "cut") >= k, 400, synth)
        if reached and not refused and _count(url, select(RunLease.run_id).where(RunLease.run_id == "cut")):
            second = Synthesizer(config, url, "cut")
            assert second.run(timeout=120) == 2, second.err()[-3000:]
            assert "run 'cut' is being played by" in second.err() and f"(pid {synth.proc.pid})" in second.err()
            assert "Traceback" not in second.err()
            refused = True
        time.sleep(extra_s)
        if not reached or synth.proc.poll() is not None:
            synth.wait()
            break  # the run finished before this moment came
        cut_at.append(_rounds(url, "cut"))
        synth.kill()
        logs.append(synth.err())
    assert len(cut_at) >= 3, f"killed only at {cut_at}: the moments came too late"
    assert refused, "no moment found the run held, to try a second synthesizer on it"
    final = Synthesizer(config, url, "cut")
    assert final.run() == 0, final.err()[-3000:]
    assert "taking over from" in "".join(logs[1:]) + final.err(), "no synthesizer took over a killed one's lease"
    assert snapshot(url, "cut") == reference, f"kills after {cut_at} stored rounds changed what the run holds"
    print(json.dumps({"killed_after_rounds": cut_at, "moments": moments, "rounds": total}))


def test_episode_workers_killed_with_the_synthesizer_leave_nothing_twice(stack) -> None:
    """Episodes in a Ray actor (`ray.episode_workers: 1`) rather than the driver: kill -9 half-way through,
    rerun → what an uninterrupted run with episodes in the driver holds. Rounds a worker had played but the
    driver not yet written are played again, identically."""
    config, url, reference = stack
    total = sum(len(rounds) for _, _, rounds, *_ in reference["episodes"].values())
    synth = Synthesizer(config, url, "workers", "ray.episode_workers=1").start()
    reached = _wait_for(lambda: _rounds(url, "workers") >= total // 2, 400, synth)
    assert reached and synth.proc is not None and synth.proc.poll() is None, synth.err()[-3000:]
    cut_at = _rounds(url, "workers")
    synth.kill()
    final = Synthesizer(config, url, "workers", "ray.episode_workers=1")
    assert final.run() == 0, final.err()[-3000:]
    assert "on 1 episode worker(s)" in final.err(), final.err()[-2000:]
    assert 0 < cut_at < total and _rounds(url, "workers") == total
    assert snapshot(url, "workers") == reference, f"a kill after {cut_at} stored rounds changed what the run holds"


def _episode_worker_pids(synth: Synthesizer) -> list[int]:
    """The episode worker actors' processes of `synth`'s own Ray (they inherit its RAY_TMPDIR)."""
    marker = f"RAY_TMPDIR={synth.ray_tmp}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::EpisodeWorker"):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_an_episode_worker_killed_mid_run_is_replaced_and_the_run_holds_what_an_uninterrupted_one_does(
    stack,
) -> None:
    """The worker actor playing the episodes is killed with -9 mid-run: the synthesizer replaces it, the
    episodes it held continue on the new one from their last stored round, and the run completes holding
    what an uninterrupted run holds (rounds the dead worker had played unstored are played again,
    identically; their prompt rewrites keep their version numbers)."""
    config, url, reference = stack
    total = sum(len(rounds) for _, _, rounds, *_ in reference["episodes"].values())
    synth = Synthesizer(config, url, "replaced", "ray.episode_workers=1").start()
    try:
        reached = _wait_for(lambda: _rounds(url, "replaced") >= 1 and _episode_worker_pids(synth), 400, synth, 0.1)
        assert reached, synth.err()[-3000:]
        cut_at = _rounds(url, "replaced")
        (victim,) = _episode_worker_pids(synth)
        os.kill(victim, signal.SIGKILL)
        code = synth.proc.wait(timeout=600) if synth.proc is not None else None
    finally:
        synth.kill()
    log = synth.err()
    assert code == 0, log[-3000:]
    assert cut_at < total, "the run ended before the worker was killed"
    assert re.search(r"episode worker 0 died \(\w+\); replaced it", log), log[-3000:]
    assert "on 1 episode worker(s) (1 replaced)" in log, log[-2000:]
    assert snapshot(url, "replaced") == reference, f"a worker killed after {cut_at} stored rounds changed the run"


@pytest.mark.vllm
def test_vllm_engine_kill_minus_nine_and_rerun_store_each_round_once(tmp_path: Path, fresh_postgres_url: str) -> None:
    """`backend: vllm` (the vLLM CPU engine in the engine actor): the synthesizer killed with -9 after its first
    stored round, the same command again → every episode finished, each round stored once, every stored round
    left as it was."""
    config = _config(tmp_path)
    settings = ("models.default.backend=vllm", "models.default.max_model_len=2048", "models.default.kv_cache_gb=1")
    synth = Synthesizer(config, fresh_postgres_url, "vllm", *settings).start()
    assert _wait_for(lambda: _rounds(fresh_postgres_url, "vllm") >= 1, 400, synth), synth.err()[-3000:]
    synth.kill()
    before = snapshot(fresh_postgres_url, "vllm")["episodes"]
    final = Synthesizer(config, fresh_postgres_url, "vllm", *settings)
    assert final.run() == 0, final.err()[-3000:]
    after = snapshot(fresh_postgres_url, "vllm")
    assert after["status"] == "completed" and len(after["episodes"]) == len(PROMPTS)
    assert all(status in {"accepted", "gave_up", "failed"} for status, *_ in after["episodes"].values())
    assert sum(len(r) for _, _, r, *_ in before.values()) < sum(len(r) for _, _, r, *_ in after["episodes"].values())
    for prompt_id, (_, _, rounds, *_) in before.items():  # what the killed run stored is kept, unchanged
        assert after["episodes"][prompt_id][2][: len(rounds)] == rounds
    engine = open_database(fresh_postgres_url)
    with session_scope(engine) as session:
        stored = session.execute(select(Round.episode_id, Round.index)).all()
    engine.dispose()
    assert len(stored) == len(set(stored)) == sum(len(r) for _, _, r, *_ in after["episodes"].values())


def _terminate(admin, database: str) -> int:
    with admin.connect() as conn:
        return conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).scalar_one()


def test_terminated_connections_are_retried_and_an_outage_stops_the_run_cleanly(
    stack, tmp_path: Path, postgres_server_url: str
) -> None:
    """PostgreSQL backends terminated under a run: it goes on. Then the database refuses connections for
    longer than storage.retry_s: the run stops (exit 75, `interrupted`, no episode failed for it), and a
    rerun completes it with what an uninterrupted run holds."""
    _, url, reference = stack
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("retry_s: 30", "retry_s: 3"))
    database = make_url(url).database
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    synth = Synthesizer(config, url, "pg").start()
    terminated = 0
    try:
        assert _wait_for(lambda: _rounds(url, "pg") >= 1, 400, synth), synth.err()[-2000:]
        for _ in range(3):  # the run's connections are dropped under it, between and inside transactions
            terminated += _terminate(admin, database)
            time.sleep(1.5)
        after = _rounds(url, "pg")
        went_on = _wait_for(lambda: _rounds(url, "pg") > after, 300, synth)
        assert went_on, "the run did not go on: " + synth.err()[-3000:]
        with admin.connect() as conn:  # no new connections, and the open ones dropped: the server is "down"
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        _terminate(admin, database)
        # the run gives up after retry_s; then it stores its status (retrying) when the server is back
        assert _wait_for(lambda: "prefsmith: stopping:" in synth.err(), 60, synth), synth.err()[-3000:]
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        code = synth.wait(timeout=120)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    err = synth.err()
    assert terminated >= 1
    assert code == 75, err[-3000:]
    assert "the database kept failing for 3 s" in err and "run pg interrupted (" in err and "Traceback" not in err
    stopped = snapshot(url, "pg")
    assert stopped["status"] == "interrupted"
    assert all(status != "failed" for status, *_ in stopped["episodes"].values()), "an outage failed an episode"
    rerun = Synthesizer(config, url, "pg")
    assert rerun.run() == 0, rerun.err()[-3000:]
    assert snapshot(url, "pg") == reference


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_with_a_hung_tool_exits_within_a_bound(tmp_path: Path, stack, signals: int) -> None:
    _, url, _ = stack
    config = _config(tmp_path, tools="[reference_answer, 'tests.hung_tool:HungTool']")
    run = f"hung{signals}"
    synth = Synthesizer(config, url, run)
    marker = tmp_path / "hung-tool-called"
    synth.env["PREFSMITH_TEST_HUNG_MARKER"] = str(marker)
    synth.start()
    assert _wait_for(lambda: _count(url, select(RunLease.run_id).where(RunLease.run_id == run)) == 1, 300, synth)
    # the engine is up and the first round is at the judge's tools, where it hangs
    assert _wait_for(marker.exists, 300, synth), synth.err()[-3000:]
    time.sleep(1)
    assert synth.proc.poll() is None, synth.err()[-3000:]
    sent = time.monotonic()
    synth.proc.send_signal(signal.SIGTERM)
    if signals == 2:
        time.sleep(1)
        synth.proc.send_signal(signal.SIGTERM)
    code = synth.wait(timeout=300)
    took = time.monotonic() - sent
    # once: the round in progress finishes (each hung call is cut at the tool timeout); twice: at once
    bound = 120 if signals == 1 else 30
    assert took < bound, f"exited {took:.0f} s after SIGTERM"
    assert code == 143, synth.err()[-3000:]
    assert snapshot(url, run)["status"] == "interrupted"
    print(json.dumps({"signals": signals, "exit_s": round(took, 1)}))
