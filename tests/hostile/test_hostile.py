"""The hostile corpus against the real sandbox, as root and as an unprivileged user: every escape, forgery and
denial-of-service case contained, honest code judged right, 16 concurrent sandboxes judged right, and the host
checked from outside afterwards (no new files, no processes left behind, no connection to our listeners)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.cases import HONEST, HOSTILE

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("runner.py")
SYSTEM_PYTHON = "/usr/bin/python3"
WATCHED = ("/tmp", "/var/tmp", "/dev/shm", "/", "/usr", "/root", "/home", str(REPO))
MODES = ("root", "unprivileged")


def _entries() -> dict[str, set[str]]:
    found = {}
    for folder in WATCHED:
        try:
            found[folder] = set(os.listdir(folder))
        except OSError:
            found[folder] = set()
    return found


def _foreign_processes() -> list[str]:
    """Processes in another PID namespace (a sandbox that outlived its call) or, as root, of user nobody
    (every sandbox runs as nobody then)."""
    own = os.readlink("/proc/self/ns/pid")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            namespace = os.readlink(entry / "ns" / "pid")
            uid = entry.stat().st_uid
            name = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        # A zombie is already dead: bwrap's exited PID-1 waits there for init to reap it.
        if state != "Z" and (namespace != own or (os.geteuid() == 0 and uid == 65534)):
            found.append(f"{entry.name} {name} uid={uid}")
    return found


def _settled(probe: Callable[[], list[str]], seconds: float = 5.0) -> list[str]:
    """`probe()` once it comes back empty, or what it still finds after `seconds` (a killed sandbox's
    processes take a moment to go)."""
    deadline = time.monotonic() + seconds
    found = probe()
    while found and time.monotonic() < deadline:
        time.sleep(0.1)
        found = probe()
    return found


def _command(mode: str) -> list[str]:
    if mode == "root":
        if os.geteuid() != 0:
            pytest.skip("the root half of the corpus needs root")
        return [sys.executable, "-B", str(RUNNER)]
    if os.geteuid() != 0:  # already unprivileged: our own Python will do
        return [sys.executable, "-B", str(RUNNER)]
    if not os.access(SYSTEM_PYTHON, os.X_OK) or shutil.which("runuser") is None:
        pytest.fail(f"{SYSTEM_PYTHON} and runuser are needed to run the corpus as nobody (`make install`)")
    return ["runuser", "-u", "nobody", "--", SYSTEM_PYTHON, "-B", str(RUNNER)]


@pytest.fixture(scope="module", params=MODES)
def corpus(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Runs the whole corpus once per mode with host-side traps in place, then inspects the host."""
    mode: str = request.param
    command = _command(mode)
    token = uuid.uuid4().hex[:12]
    secret = f"secret-{uuid.uuid4().hex}"
    # World-readable on purpose: only the sandbox's mount namespace keeps it out of reach, not permissions.
    secret_dir = Path(tempfile.mkdtemp(prefix=f"prefsmith-hostile-{token}-"))
    secret_dir.chmod(0o755)
    (secret_dir / "secret.txt").write_text(secret)
    (secret_dir / "secret.txt").chmod(0o644)
    tcp = socket.create_server(("127.0.0.1", 0))
    unix_path = socket.socket(socket.AF_UNIX)
    unix_path.bind(str(secret_dir / "listener.sock"))
    os.chmod(secret_dir / "listener.sock", 0o777)
    unix_abstract = socket.socket(socket.AF_UNIX)
    unix_abstract.bind(f"\0prefsmith-hostile-{token}")
    listeners = (tcp, unix_path, unix_abstract)
    for listener in listeners:
        listener.listen(8)
        listener.setblocking(False)
    before = _entries()
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8", "PREFSMITH_HOSTILE_SECRET": secret}
    try:
        ran = subprocess.run(
            [*command, "--token", token, "--port", str(tcp.getsockname()[1]), "--secret-dir", str(secret_dir),
             "--secret", secret, "--host-pid", str(os.getpid())],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
        results = json.loads(ran.stdout)
        after = _entries()
        connections = []
        for listener in listeners:
            try:
                connections.append(listener.accept())
            except BlockingIOError:
                pass
        yield {
            "mode": mode,
            "uid": results["uid"],
            "results": results,
            "secret": secret,
            "new_entries": {folder: sorted(after[folder] - before[folder]) for folder in WATCHED},
            "token_entries": sorted(
                f"{folder}/{name}" for folder in WATCHED for name in after[folder] if token in name
                and Path(folder, name) != secret_dir
            ),
            "leftover_processes": _settled(_foreign_processes),
            "connections": len(connections),
        }
    finally:
        for listener in listeners:
            listener.close()
        shutil.rmtree(secret_dir, ignore_errors=True)


def test_the_mode_is_what_it_claims(corpus: dict[str, Any]) -> None:
    assert (corpus["uid"] == 0) == (corpus["mode"] == "root")


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_case_is_contained(corpus: dict[str, Any], name: str) -> None:
    result = corpus["results"]["hostile"][name]
    assert not result["passed"], f"{name}: the attack worked ({result['reason']})"
    assert result["outcome"] in HOSTILE[name].outcomes, (result["outcome"], result["reason"], result["stderr"][-500:])
    # (The tests' own source names the secret; what the code printed or raised must not.)
    errors = " ".join(test["error"] for test in result["tests"])
    assert corpus["secret"] not in result["stdout"] + result["stderr"] + errors
    assert "seccomp filter" in result["isolation"] and not result["missing"]


def test_the_host_is_untouched(corpus: dict[str, Any]) -> None:
    assert corpus["token_entries"] == []
    assert corpus["leftover_processes"] == []
    assert corpus["connections"] == 0
    # Other processes on the machine may create files in /tmp or a home meanwhile (every attack's file names
    # carry the token, checked above); nothing may appear in the system folders.
    for folder in ("/", "/usr", "/dev/shm"):
        assert corpus["new_entries"][folder] == [], folder


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_code_is_judged_right(corpus: dict[str, Any], name: str) -> None:
    case, verdict = HONEST[name]
    result = corpus["results"]["honest"][name]
    assert result["passed"] is verdict, (result["outcome"], result["reason"], result["stderr"][-500:])
    assert result["outcome"] in case.outcomes
    assert all(test["passed"] for test in result["tests"]) is verdict


def test_sixteen_sandboxes_at_once(corpus: dict[str, Any]) -> None:
    parallel = corpus["results"]["parallel"]
    assert len(parallel) == 16
    for index, result in enumerate(parallel):
        assert result["passed"] is result["expected"], (index, result["outcome"], result["reason"])
        # The first test checks that the scratch directory holds this sandbox's file and no other's.
        assert result["tests"][0]["passed"], (index, result["tests"])
