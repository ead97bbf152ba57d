"""Sandboxed execution of candidate code against tests: a throwaway directory, CPU-time, memory, file-size,
process and output limits, a wall-clock timeout, no network, and an environment without secrets.

Layers, so that one missing layer (no root on a laptop) still leaves the others: a child process with
rlimits in its own session; as root, its own network namespace and the unprivileged user `nobody`; and
inside the interpreter an audit hook that refuses sockets, new processes, native code loading, and writes
outside the sandbox directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.base import Evidence, JudgeTool, PromptContext

CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

# Runs inside the child before the candidate's code; its audit hook cannot be removed once added.
_RUNNER = r'''
import os, sys
_ROOT = os.path.realpath(os.getcwd())
_BLOCKED_PREFIXES = ("socket.", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec",
                     "os.system", "subprocess.", "ctypes.", "os.kill", "os.killpg", "pty.", "resource.setrlimit",
                     "sys.remote_exec")
_WRITE_EVENTS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
                 "os.link", "os.truncate", "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.utime")

def _inside(path):
    if isinstance(path, int):
        return True
    path = os.fsdecode(path)
    full = os.path.realpath(os.path.join(_ROOT, path))
    return full == _ROOT or full.startswith(_ROOT + os.sep)

def _hook(event, args):
    if event == "import" and args[0] in ("_posixsubprocess", "_ctypes", "_socket", "_multiprocessing"):
        raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
    if event.startswith(_BLOCKED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (
            flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        if isinstance(path, (str, bytes)) and "environ" in os.fsdecode(path) and "/proc" in os.fsdecode(path):
            raise PermissionError("sandbox: reading process environments is not allowed")
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
    elif event in _WRITE_EVENTS:
        for arg in args[:2]:
            if isinstance(arg, (str, bytes, os.PathLike)) and not _inside(arg):
                raise PermissionError(f"sandbox: {event} outside the sandbox directory is not allowed")

with open("program.py", encoding="utf-8") as _fh:
    _source = _fh.read()
_code = compile(_source, "program.py", "exec")
sys.addaudithook(_hook)
del _fh
exec(_code, {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 2
    wall_seconds: float = 5.0
    memory_mb: int = 512
    output_bytes: int = 64 * 1024
    processes: int = 0  # children the code may start; forks are refused by the audit hook anyway


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    outcome: Literal["passed", "failed", "timeout", "cpu_limit", "memory_limit", "output_limit", "blocked"]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: list[str]


def _is_root() -> bool:
    return os.geteuid() == 0


def _nobody() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _world_executable(path: Path) -> bool:
    """Whether an unprivileged user can execute `path` (every folder above it searchable by others)."""
    real = path.resolve()
    if not real.is_file() or not real.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in real.parents)


def _interpreter(drop_privileges: bool) -> str | None:
    """A Python the child can run: ours, or, when it lives where `nobody` cannot reach (a venv under
    /root), the system's — candidate code needs only the standard library. None: cannot drop privileges."""
    if not drop_privileges or _world_executable(Path(sys.executable)):
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if _world_executable(Path(candidate)):
            return candidate
    return None


def _child_setup(limits: SandboxLimits, drop_to: tuple[int, int] | None, new_netns: bool) -> None:
    """Runs in the child between fork and exec: only pre-imported, async-signal-tolerant work here."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    if new_netns:
        _LIBC.unshare(CLONE_NEWNET)
    if drop_to is not None:
        uid, gid = drop_to
        os.setgroups([])
        os.setgid(gid)
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes + 1, limits.processes + 1))
        os.setuid(uid)


def _classify(returncode: int | None, stderr: str, timed_out: bool, limits: SandboxLimits, cpu_used: float) -> str:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "passed"
    if returncode == -signal.SIGXCPU or returncode == -signal.SIGKILL and cpu_used >= limits.cpu_seconds:
        return "cpu_limit"
    if returncode == -signal.SIGXFSZ or "File too large" in stderr:
        return "output_limit"
    if "MemoryError" in stderr:
        return "memory_limit"
    if "PermissionError: sandbox:" in stderr:
        return "blocked"
    return "failed"


def run_python(code: str, tests: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `code` followed by `tests` (asserts) in a fresh sandbox; passed means exit status 0."""
    limits = limits or SandboxLimits()
    workdir = Path(tempfile.mkdtemp(prefix="prefsmith-sandbox-"))
    isolation = ["rlimits", "own session", "clean environment", "audit hook", "throwaway directory"]
    drop_to = _nobody() if _is_root() else None
    interpreter = _interpreter(drop_to is not None)
    if interpreter is None:
        drop_to, interpreter = None, sys.executable
    new_netns = _is_root()
    if new_netns:
        isolation.append("network namespace")
    if drop_to is not None:
        isolation.append("user nobody")
    try:
        (workdir / "program.py").write_text(code + "\n\n" + tests + "\n", encoding="utf-8")
        (workdir / "runner.py").write_text(_RUNNER, encoding="utf-8")
        stdout_path, stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
        if drop_to is not None:
            for path in (workdir, *workdir.iterdir()):
                os.chown(path, *drop_to)
        started = time.perf_counter()
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = subprocess.Popen(
                [interpreter, "-I", "-B", "runner.py"],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
                start_new_session=True,
                preexec_fn=lambda: _child_setup(limits, drop_to, new_netns),  # noqa: PLW1509 - see module doc
            )
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        seconds = time.perf_counter() - started
        stdout = stdout_path.read_bytes()[: limits.output_bytes].decode("utf-8", "replace")
        stderr = stderr_path.read_bytes()[: limits.output_bytes].decode("utf-8", "replace")
        outcome = _classify(proc.returncode, stderr, timed_out, limits, seconds)
        return SandboxResult(outcome == "passed", outcome, proc.returncode, stdout, stderr, seconds, isolation)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The code in a candidate answer: its fenced ```python blocks if any, else the whole text."""
    blocks = _FENCE.findall(text)
    return "\n\n".join(blocks) if blocks else text


class PythonSandboxArgs(BaseModel):
    code: str = Field(description="Python source to run (a candidate's code).")
    tests: str = Field("", description="Test code (asserts) run after it.")
    timeout_s: float = Field(5.0, gt=0, le=60, description="Wall-clock limit.")
    memory_mb: int = Field(512, gt=16, le=8192, description="Address-space limit.")


class PythonSandboxTool(JudgeTool):
    name: str = "python_sandbox"
    description: str = "Run candidate Python code against the task's tests in an isolated sandbox."
    args_schema: type[BaseModel] = PythonSandboxArgs
    default_timeout_s: float = 5.0
    default_memory_mb: int = 512

    def _run(self, code: str, tests: str = "", timeout_s: float = 5.0, memory_mb: int = 512) -> dict[str, Any]:
        limits = SandboxLimits(cpu_seconds=max(1, int(timeout_s)), wall_seconds=timeout_s, memory_mb=memory_mb)
        result = run_python(extract_code(code), tests, limits)
        tail = (result.stderr.strip().splitlines() or [""])[-1][:200]
        summary = "tests passed" if result.passed else f"{result.outcome}: {tail}"
        data = {
            "outcome": result.outcome,
            "returncode": result.returncode,
            "stdout": result.stdout[-2000:],
            "stderr": result.stderr[-2000:],
            "seconds": round(result.seconds, 3),
            "isolation": result.isolation,
        }
        return Evidence(tool=self.name, ok=True, verdict=result.passed, summary=summary, data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        if candidate is None or "tests" not in prompt.meta:
            return None
        return {
            "code": candidate,
            "tests": str(prompt.meta["tests"]),
            "timeout_s": self.default_timeout_s,
            "memory_mb": self.default_memory_mb,
        }
