"""Synthesis on the real stack: local Ray, SmolLM2 engine actors, SQLite and PostgreSQL. A run completes,
survives its engine actor killed twice, refresh plays only new prompts, schedule fires and refuses overlap,
and `ray job submit` runs it on a two-node cluster started here (two raylets on loopback, stopped by their
PIDs), its episodes in worker actors on one node and its engine on the other. kill -9
and other faults: tests/test_faults.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import ray
from sqlalchemy import func, select

from configs import load_config
from configs.errors import PrefsmithError
from pipelines.schedule import run_schedule
from pipelines.synthesis.run import prepare_run, restore_book
from pipelines.synthesis.service import synthesize
from storage import leases
from storage import records as rows
from storage.db import session_scope
from storage.migrate import open_database
from storage.models import Episode, PreferencePair, Round, Run
from storage.vocabulary import EPISODE_FINISHED, EpisodeStatus
from tests.conftest import REPO

EASY = [(f"What is {a} + {b}? Answer with the number.", a + b) for a, b in
        [(2, 3), (10, 4), (1, 1), (6, 2), (3, 3), (7, 1), (4, 4), (5, 2), (9, 1), (8, 2)]]


def write_prompts(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("".join(json.dumps({"prompt": q, "answer": a, "expression": q.split("is ")[1].split("?")[0]})
                            + "\n" for q, a in rows))


def write_config(folder: Path, prompts: Path, in_flight: int = 8, candidates: int = 2, max_tokens: int = 10) -> Path:
    config = folder / "synth.yaml"
    config.write_text(f"""
models:
  default: {{name: smollm2-135m-instruct, backend: transformers, dtype: float32, threads: 1}}
sampling: {{temperature: 1.0, top_p: 0.95, max_tokens: {max_tokens}, seed: 1}}
game: {{candidates: {candidates}, max_rounds: 1, accept_threshold: 8}}
tools: {{enabled: [reference_answer, calculator]}}
prompts: [{{path: {prompts}}}]
ray: {{num_cpus: 2, episodes_in_flight: {in_flight}}}
""")
    return config


def counts(url: str, run_id: str) -> dict[str, int]:
    engine = open_database(url)
    with session_scope(engine) as session:
        episodes = session.execute(select(Episode).where(Episode.run_id == run_id)).scalars().all()
        result = {
            "episodes": len(episodes),
            "done": sum(e.status in EPISODE_FINISHED for e in episodes),
            "accepted_episodes": sum(e.status == EpisodeStatus.ACCEPTED for e in episodes),
            "rounds": session.execute(select(func.count()).select_from(Round).join(Episode)
                                      .where(Episode.run_id == run_id)).scalar_one(),
            "pairs": session.execute(select(func.count()).select_from(PreferencePair)
                                     .where(PreferencePair.run_id == run_id)).scalar_one(),
            "accepted_pairs": session.execute(select(func.count()).select_from(PreferencePair).where(
                PreferencePair.run_id == run_id, PreferencePair.accepted.is_(True))).scalar_one(),
        }
    engine.dispose()
    return result


def test_limit_fixes_the_runs_prompts_the_first_time_and_says_what_it_left(tmp_path: Path) -> None:
    config = load_config("quickstart", ["prompts=[{builtin: arithmetic, limit: 8, seed: 1}]"])
    url = f"sqlite:///{tmp_path / 'limit.db'}"
    first = prepare_run(config, "limited", url, limit=2, only_unplayed=False)
    assert (first.metrics.episodes_total, first.metrics.already_played, first.metrics.not_selected) == (2, 0, 6)
    assert "0 already played in earlier runs; 6 not selected (--limit)" in first.report.summary()
    selected = [item.prompt_id for item in first.pending]
    with session_scope(first.engine) as session:  # one selected episode ends, as a played run's would
        rows.fail_episode(session, "limited", selected[0], "ended by the test")
    leases.release(first.engine, first.lease)
    first.engine.dispose()
    # the same command again (as after kill -9): the same prompts, none new
    again = prepare_run(config, "limited", url, limit=2, only_unplayed=False)
    assert [item.prompt_id for item in again.pending] == selected[1:]
    assert (again.metrics.episodes_total, again.metrics.already_played, again.metrics.not_selected) == (1, 1, 6)
    with session_scope(again.engine) as session:
        rows.fail_episode(session, "limited", selected[1], "ended by the test")
    leases.release(again.engine, again.lease)
    again.engine.dispose()
    second = prepare_run(config, "limited", url, limit=None, only_unplayed=False)
    leases.release(second.engine, second.lease)
    second.engine.dispose()
    assert (second.metrics.episodes_total, second.metrics.already_played, second.metrics.not_selected) == (6, 2, 0)
    assert "2 already played in earlier runs;" in second.report.summary()
    assert "not selected" not in second.report.summary()


def test_a_rerun_resumes_the_prompt_versions_the_run_had_promoted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'book.db'}"
    engine = open_database(url, migrate=True)
    with session_scope(engine) as session:
        rows.ensure_run(session, "book", "b" * 64, {})
        rows.store_prompt_versions(session, "book", [
            rows.PromptVersionRecord("target", 0, "t0"), rows.PromptVersionRecord("target", 1, "t1", 0, "be exact"),
            rows.PromptVersionRecord("target", 2, "t2", 0, "rival"), rows.PromptVersionRecord("judge", 0, "j0"),
        ])
        rows.update_run(session, "book", current_prompt_versions={"target": 1, "judge": 0})
    target, judge = restore_book(engine, "book").current()
    engine.dispose()
    assert (target.version, target.text, target.critique, judge.version, judge.text) == (1, "t1", "be exact", 0, "j0")


@pytest.fixture(scope="module")
def local_ray(small_model_path: Path):  # the model is prepared before workers need it
    ray.init(num_cpus=2, include_dashboard=False, namespace="prefsmith", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("synth")
    prompts = folder / "prompts.jsonl"
    write_prompts(prompts, EASY[:8])
    return folder, write_config(folder, prompts)


@pytest.mark.model
@pytest.mark.ray
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_run_completes_and_stores_everything(local_ray, workspace, kind: str, request: pytest.FixtureRequest) -> None:
    folder, config_file = workspace
    url = f"sqlite:///{folder / 'run.db'}" if kind == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    config = load_config(config_file)
    report = synthesize(config, run_id="eight", db_url=url)
    assert report.metrics.episodes_total == report.metrics.episodes_done == 8 and not report.interrupted
    stored = counts(url, "eight")
    assert stored["episodes"] == stored["done"] == 8
    assert stored["rounds"] == report.metrics.rounds == 8
    assert stored["pairs"] >= 1, stored
    assert stored["accepted_pairs"] == stored["accepted_episodes"] == report.metrics.accepted
    again = synthesize(config, run_id="eight", db_url=url)
    assert again.metrics.episodes_total == 0 and again.metrics.already_played == 8
    assert counts(url, "eight") == stored
    if kind == "sqlite":
        # refresh: a new prompt in the same source; only it is played, and a second refresh adds nothing
        write_prompts(Path(config.prompts[0].path), EASY[:9])
        first = synthesize(config, db_url=url, only_unplayed=True)
        assert (first.metrics.episodes_total, first.metrics.already_played) == (1, 8)
        second = synthesize(config, db_url=url, only_unplayed=True)
        assert second.metrics.episodes_total == 0
        write_prompts(Path(config.prompts[0].path), EASY[:8])


@pytest.mark.model
@pytest.mark.ray
def test_engine_actor_killed_twice_mid_run(local_ray, tmp_path: Path) -> None:
    prompts = tmp_path / "kill.jsonl"
    write_prompts(prompts, EASY[:4])
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    config = load_config(write_config(tmp_path, prompts, in_flight=1))
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(report=synthesize(config, run_id="victim", db_url=url)))
    runner.start()

    def serving_engine():
        """The run's engine actor (its name carries the run's lease) once it has answered a call."""
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("prefsmith-engine-victim-default-")]
        if not names:
            return None
        try:
            actor = ray.get_actor(names[0], namespace="prefsmith")
            return actor if ray.get(actor.engine_calls.remote(), timeout=60) >= 1 else None
        except (ValueError, ray.exceptions.RayError):
            return None

    for _ in range(2):
        deadline, actor = time.time() + 300, None
        while actor is None and time.time() < deadline and runner.is_alive():
            actor = serving_engine()
            time.sleep(0.5)
        assert actor is not None, "the engine never served a call"
        ray.kill(actor)
    runner.join(timeout=600)
    report = outcome["report"]
    assert report.engine_restarts == {"default": 2} and not report.interrupted
    assert report.metrics.episodes_done == 4
    stored = counts(url, "victim")
    assert stored["episodes"] == stored["done"] == 4


@pytest.mark.model
@pytest.mark.ray
def test_two_replicas_serve_one_run(local_ray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two engine actors share one run's calls. Their torch threads are left to the default with no
    OMP_NUM_THREADS in the synthesizer: every CPU of the node, not the 1 that Ray puts in its workers' env."""
    prompts = tmp_path / "replicas.jsonl"
    write_prompts(prompts, EASY[:4])
    config = load_config(
        write_config(tmp_path, prompts, in_flight=4), ["models.default.replicas=2", "models.default.threads=null"]
    )
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    report = synthesize(config, run_id="replicas", db_url=f"sqlite:///{tmp_path / 'replicas.db'}")
    usage = report.engine_usage["default"]
    assert report.metrics.episodes_done == 4 and not report.interrupted
    assert usage["replicas"] == 2 and all(tokens > 0 for tokens in usage["per_replica_completion_tokens"]), usage
    assert sum(usage["per_replica_completion_tokens"]) == usage["completion_tokens"]
    assert usage["per_replica_threads"] == [len(os.sched_getaffinity(0))] * 2, usage
    deadline = time.time() + 30
    while [a for a in ray.util.list_named_actors(all_namespaces=True) if "replicas" in a["name"]]:
        assert time.time() < deadline, "the run's engine actors outlived it"
        time.sleep(0.5)


@pytest.mark.model
@pytest.mark.ray
@pytest.mark.vllm
def test_vllm_engine_actor_synthesizes_on_sqlite_and_postgresql_and_survives_being_killed(
    local_ray, tmp_path: Path, fresh_postgres_url: str
) -> None:
    prompts = tmp_path / "vllm.jsonl"
    write_prompts(prompts, EASY[:4])
    config = load_config(write_config(tmp_path, prompts, in_flight=4), [
        "models.default.backend=vllm", "models.default.max_model_len=2048", "models.default.kv_cache_gb=1"])
    sqlite_url = f"sqlite:///{tmp_path / 'vllm.db'}"
    report = synthesize(config, run_id="vllm", db_url=sqlite_url)
    assert report.metrics.episodes_done == 4 and not report.interrupted
    stored = counts(sqlite_url, "vllm")
    assert stored["episodes"] == stored["done"] == 4 and stored["rounds"] == 4 and stored["pairs"] >= 1, stored
    assert report.engine_usage["default"]["completion_tokens"] > 0

    # PostgreSQL, and the vLLM engine actor killed once it has served a call: replaced, the run completes
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(report=synthesize(config, run_id="vllm", db_url=fresh_postgres_url)))
    runner.start()
    deadline, killed = time.time() + 300, False
    while not killed and time.time() < deadline and runner.is_alive():
        for named in ray.util.list_named_actors(all_namespaces=True):
            if named["name"].startswith("prefsmith-engine-vllm-default-"):
                try:
                    actor = ray.get_actor(named["name"], namespace="prefsmith")
                    if ray.get(actor.engine_calls.remote(), timeout=60) >= 1:
                        ray.kill(actor)
                        killed = True
                except (ValueError, ray.exceptions.RayError):
                    pass
        time.sleep(0.5)
    runner.join(timeout=900)
    assert killed and outcome["report"].engine_restarts == {"default": 1}
    again = counts(fresh_postgres_url, "vllm")
    assert again["episodes"] == again["done"] == 4 and again["rounds"] == 4, again
    engine = open_database(fresh_postgres_url)
    with session_scope(engine) as session:
        rounds = session.execute(select(Round.episode_id, Round.index)).all()
    engine.dispose()
    assert len(rounds) == len(set(rounds)) == 4, "a round was stored twice"


def _ray_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


def _stop_pids(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RAY_BIN = str(Path(sys.executable).with_name("ray"))


def _start_node(ray_tmp: Path, env: dict[str, str], *args: str) -> int:
    """`ray start` with ports of its own (the head's GCS port, returned, when `args` start none); stopped by
    the caller through the PIDs under `ray_tmp`."""
    gcs = free_port()
    ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--metrics-export-port={free_port()}",
             # workers below the ephemeral range (32768+ on Linux) that free_port() draws from, or a worker
             # port can land on a component's port and `ray start` refuses to run
             f"--min-worker-port={20000 + gcs % 120 * 100}", f"--max-worker-port={20099 + gcs % 120 * 100}"]
    head = [] if any(a.startswith("--address") for a in args) else ["--head", f"--port={gcs}"]
    started = subprocess.run(
        [RAY_BIN, "start", *head, "--node-ip-address=127.0.0.1", f"--temp-dir={ray_tmp}", "--disable-usage-stats",
         *ports, *args],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    return gcs


def _ray_env() -> dict[str, str]:
    # Token authentication, as Ray 2.60 clusters use by default; the nodes and the clients share the token.
    return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)


@pytest.mark.model
@pytest.mark.ray
@pytest.mark.postgres
def test_ray_job_submit_on_a_two_node_cluster_plays_episodes_and_engine_on_different_nodes(
    workspace, tmp_path: Path, small_model_path: Path, fresh_postgres_url: str
) -> None:
    """`ray job submit` to a cluster started here: a head offering `engine_node` and a second node (its own
    raylet, on loopback) offering `episode_node`. The engine actor lands on the head, two episode workers on
    the other node, the driver only schedules and writes to PostgreSQL; the run completes."""
    _, config_file = workspace
    # A temp dir per node: nodes sharing one would unpack the job's working dir into the same folder at once.
    ray_tmp = Path(tempfile.mkdtemp(prefix="pscluster-", dir="/tmp"))
    node_tmp = Path(tempfile.mkdtemp(prefix="pscluster-node-", dir="/tmp"))
    dashboard = free_port()
    env = _ray_env()
    settings = ["models.default.resources={engine_node: 1}", "ray.episode_workers=2",
                "ray.episode_worker_resources={episode_node: 1}", "ray.episodes_in_flight=4",
                "game.pooled_prior=true"]  # each worker pools the verdicts of its own episodes
    runtime_env = {"env_vars": {"PREFSMITH_HOME": os.environ["PREFSMITH_HOME"], "HF_HUB_OFFLINE": "1",
                                "OMP_NUM_THREADS": "1"}}
    try:
        gcs = _start_node(ray_tmp, env, "--num-cpus=1", "--resources={\"engine_node\": 1}",
                          "--include-dashboard=true", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1")
        _start_node(node_tmp, env, f"--address=127.0.0.1:{gcs}", "--num-cpus=1", "--resources={\"episode_node\": 2}")
        job = subprocess.run(
            [RAY_BIN, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", str(REPO),
             f"--runtime-env-json={json.dumps(runtime_env)}", "--",
             sys.executable, "-m", "pipelines.cli", "synthesize", "--config", str(config_file),
             "--db", fresh_postgres_url, "--run-name", "cluster", "--limit", "4", *(f"--set={s}" for s in settings)],
            env=env, capture_output=True, text=True, timeout=600,
        )
        failure = job.stdout[job.stdout.find("Traceback"):][:4000] if "Traceback" in job.stdout else job.stdout[-3000:]
        assert job.returncode == 0 and "succeeded" in job.stdout.lower(), f"{failure}\n{job.stderr[-2000:]}"
    finally:
        _stop_pids(_ray_pids(str(node_tmp)) + _ray_pids(str(ray_tmp)))
        shutil.rmtree(node_tmp, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "on 2 episode worker(s)" in job.stdout, job.stdout[-2000:]
    stored = counts(fresh_postgres_url, "cluster")
    assert stored["episodes"] == stored["done"] == 4 and stored["rounds"] == 4, "--limit 4: the run holds 4 prompts"
    engine = open_database(fresh_postgres_url)
    with session_scope(engine) as session:
        nodes = session.get(Run, "cluster").metrics["nodes"]
    engine.dispose()
    assert len(nodes["episodes"]) == 2 and len(set(nodes["episodes"])) == 1, nodes
    assert len(nodes["engine:default"]) == 1 and set(nodes["engine:default"]).isdisjoint(nodes["episodes"]), nodes


@pytest.mark.model  # `models prepare --force` converts the model in a subprocess
def test_schedule_fires_and_refuses_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFSMITH_HOME", str(tmp_path / "home"))
    lines: list[str] = []
    report = run_schedule("* * * * * *", ["config", "show"], max_fires=2, working_dir=str(REPO), log=lines.append)
    assert (report.fired, report.started, report.refused_overlap) == (2, 2, 0)
    assert report.outcomes == ["exit 0", "exit 0"]
    # A run that outlasts the interval: converting the model into an empty home takes seconds.
    slow = ["models", "prepare", "--force"]
    holder: dict = {}
    first = threading.Thread(target=lambda: holder.update(r=run_schedule("* * * * * *", slow, max_fires=3,
                                                                           working_dir=str(REPO), log=lines.append)))
    first.start()
    time.sleep(0.5)
    with pytest.raises(PrefsmithError, match="already running"):
        run_schedule("* * * * * *", slow, max_fires=1, working_dir=str(REPO))
    first.join(timeout=300)
    assert holder["r"].started == 1 and holder["r"].refused_overlap == 2
    assert any("refused" in line for line in lines)
