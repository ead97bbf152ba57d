"""The judge's sandbox, host side: runs candidate code and its tests under bubblewrap with kernel-enforced
isolation, and reads the verdict from the harness's signed report. Standard library only, so it also runs
as an unprivileged user on a system Python (the hostile corpus does exactly that).

Layers (README "Security model"):
- bubblewrap: new user, mount, PID, network, IPC, UTS and cgroup namespaces; a read-only view of /usr (and
  the interpreter's prefix) and nothing else of the host; one size-limited tmpfs as the only writable place;
  no /proc, /etc, /tmp or /home; all capabilities dropped; no nested user namespaces; its own session.
- seccomp: a BPF filter (built by tools/seccomp.py, no library needed) refusing syscalls the code never needs
  (ptrace, process_vm_*, mount, bpf, perf_event_open, io_uring, keyctl, kexec, modules...).
- as root the whole sandbox runs as `nobody`; rlimits (CPU, address space, file size, open files, processes
  counted inside the sandbox's own user namespace) are set by the harness before candidate code runs.
- the harness (tools/sandbox_harness.py) forks the process that runs the code before it reads anything, and
  evaluates the tests itself, in the other process, on plain data the code's process answers with (repr
  text read by a literal-only evaluator); it reports each test on a pipe the code's process never had, with
  an HMAC under a per-call key; the host reads stdout/stderr/report itself, bounded, and never reads a file
  the sandbox could have written.

A layer the machine cannot provide is named in `missing`; unless weaker isolation is explicitly allowed the
call is refused rather than run unprotected.
"""

from __future__ import annotations

import ast
import functools
import hmac
import marshal
import os
import platform
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tools.seccomp import seccomp_filter

HARNESS = (Path(__file__).parent / "sandbox_harness.py").read_text(encoding="utf-8")
SCRATCH = "/sandbox"

Outcome = Literal[
    "passed", "failed", "timeout", "cpu_limit", "memory_limit", "output_limit", "blocked", "incomplete",
    "tampered", "refused",
]

# Hard bounds of the sandbox's own settings; configs/schema.py refuses values outside them at load time.
MAX_WALL_SECONDS = 60.0
MIN_MEMORY_MB = 32
MAX_MEMORY_MB = 8192
MAX_PROCESSES = 64
MAX_SCRATCH_MB = 1024


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 2
    wall_seconds: float = 5.0
    memory_mb: int = 512
    output_bytes: int = 64 * 1024
    processes: int = 0  # processes the code may start besides itself
    scratch_mb: int = 32  # size of the writable tmpfs, and the largest file the code may write


@dataclass(frozen=True)
class SandboxPolicy:
    """Where and how to run: the interpreter (None: the one running prefsmith when the sandbox user can run
    it, else the system's python3) and whether a machine without a kernel layer may run code anyway."""

    python: str | None = None
    allow_weaker: bool = False


@dataclass(frozen=True)
class TestOutcome:
    index: int
    source: str
    passed: bool
    error: str = ""
    line: int = 0  # the line of the tests a failure stopped at (0: none); in `check(candidate)`, its assert
    line_source: str = ""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    outcome: Outcome
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: list[str]
    missing: list[str] = field(default_factory=list)
    tests: list[TestOutcome] = field(default_factory=list)
    interpreter: str = ""


# ---------------------------------------------------------------------------------------------- environment


def _is_root() -> bool:
    return os.geteuid() == 0


def _nobody() -> int | None:
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return None


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can execute `path` (every folder above it searchable by others)."""
    if not path.is_file() or not path.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in path.parents)


@dataclass(frozen=True)
class _Plan:
    """How sandboxes run on this machine, worked out once per (policy, user)."""

    interpreter: str  # real path, as seen inside the sandbox too
    prefix: str  # the interpreter's installation, bound read-only when it is not under /usr
    user: int | None  # uid to run the sandbox as (root drops to nobody); None: our own
    bwrap: str | None
    isolation: tuple[str, ...]
    missing: tuple[str, ...]


def _interpreter(policy: SandboxPolicy, drop_to: int | None) -> str | None:
    """The sandbox's Python: the configured one, or ours when the sandbox user can run it, or the system's;
    candidate code needs the standard library only."""
    if policy.python:
        return str(Path(policy.python).resolve())
    candidates = [Path(sys.executable).resolve()]
    if drop_to is not None:
        candidates += [Path("/usr/bin/python3").resolve(), Path("/usr/local/bin/python3").resolve()]
    for candidate in candidates:
        if drop_to is None or _reachable_by_others(candidate):
            return str(candidate)
    return None


def _bind_arguments(prefix: str) -> list[str]:
    """Read-only binds of what the interpreter needs: /usr, the merged-/usr links, its own prefix."""
    arguments = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        path = Path(top)
        if path.is_symlink():
            arguments += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            arguments += ["--ro-bind", top, top]
    if not (prefix == "/usr" or prefix.startswith("/usr/")):
        arguments += ["--ro-bind", prefix, prefix]
    return arguments


def _bwrap_command(plan: _Plan, limits: SandboxLimits, seccomp_fd: int | None) -> list[str]:
    assert plan.bwrap is not None
    command = [
        plan.bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
        "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--hostname", "sandbox",
        *_bind_arguments(plan.prefix),
        "--dev", "/dev",
        "--size", str(limits.scratch_mb * 1024 * 1024), "--tmpfs", SCRATCH,
        "--chdir", SCRATCH,
        # bwrap's own root and /dev are tmpfs too: read-only, so the scratch tmpfs is the only writable place.
        "--remount-ro", "/dev", "--remount-ro", "/",
        "--clearenv", "--setenv", "HOME", SCRATCH, "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONHASHSEED", "0",
    ]
    if seccomp_fd is not None:
        command += ["--seccomp", str(seccomp_fd)]
    return [*command, "--", *_harness_command(plan)]


def _harness_command(plan: _Plan) -> list[str]:
    """The harness in an isolated interpreter: no site, no user paths, no bytecode written, unbuffered."""
    return [plan.interpreter, "-I", "-S", "-B", "-u", "-c", HARNESS]


def _spawn(command: list[str], plan: _Plan, pass_fds: tuple[int, ...], cwd: str | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=pass_fds,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
        start_new_session=True,
        user=plan.user,
        group=plan.user,
        extra_groups=[] if plan.user is not None else None,
    )


@functools.lru_cache(maxsize=8)
def plan_for(policy: SandboxPolicy) -> _Plan:
    """Probe the machine once: which layers it provides, and which are missing and why."""
    drop_to = _nobody() if _is_root() else None
    if _is_root() and drop_to is None:
        return _Plan("", "", None, None, (), ("unprivileged user: no user `nobody` to run the sandbox as",))
    interpreter = _interpreter(policy, drop_to)
    if interpreter is None:
        return _Plan(
            "", "", drop_to, None, (),
            ("interpreter: no Python the sandbox user can run; set tools.sandbox_python",),
        )
    prefix = str(Path(interpreter).parent.parent)
    bwrap = shutil.which("bwrap")
    missing = []
    isolation = [
        "rlimits", "tests evaluated outside the code's process", "per-test signed report", "audit hook",
        "clean environment",
    ]
    if drop_to is not None:
        isolation.append("user nobody")
    if bwrap is None:
        missing.append("bubblewrap: `bwrap` is not installed (apt-get install bubblewrap)")
        return _Plan(interpreter, prefix, drop_to, None, tuple(isolation), tuple(missing))
    filter_program = seccomp_filter()
    if filter_program is None:
        missing.append(f"seccomp: no syscall table for {platform.machine()}")
    plan = _Plan(interpreter, prefix, drop_to, bwrap, tuple(isolation), ())
    probe = run_python("pass", "", SandboxLimits(), _plan=plan, _require=False)
    if probe.outcome != "passed":
        reason = (probe.stderr.strip().splitlines() or [probe.reason])[-1][:300]
        missing.append(f"namespaces: bubblewrap could not start a sandbox here ({reason})")
        return _Plan(interpreter, prefix, drop_to, None, tuple(isolation), tuple(missing))
    isolation += [
        "bubblewrap", "user namespace", "mount namespace (read-only system, private tmpfs scratch)",
        "pid namespace", "network namespace (no interfaces but loopback)", "ipc namespace", "no capabilities",
        "no nested user namespaces",
    ]
    if filter_program is not None:
        isolation.append("seccomp filter")
    return _Plan(interpreter, prefix, drop_to, bwrap, tuple(isolation), tuple(missing))


def isolation_problem(policy: SandboxPolicy) -> str | None:
    """Why this machine cannot run sandboxes under `policy` (None: it can)."""
    plan = plan_for(policy)
    if not plan.interpreter:
        return "; ".join(plan.missing)
    if plan.missing and not policy.allow_weaker:
        return "; ".join(plan.missing) + " (set tools.sandbox_allow_weaker_isolation: true to run without it)"
    return None


# -------------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class _Verdict:
    """What a call came to: its outcome, why, and each test's outcome as far as the harness got."""

    outcome: Outcome
    reason: str
    tests: list[TestOutcome] = field(default_factory=list)


@dataclass(frozen=True)
class _Capture:
    """What the host read of one sandbox, bounded: exit status, output, the harness's report, the seconds it
    ran, and whether reading stopped at the wall clock or the output limit. The default: it never started."""

    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    report: bytes = b""
    seconds: float = 0.0
    timed_out: bool = False
    overflow: bool = False


def _read_report(raw: bytes, key: bytes) -> tuple[list[list[str]], str | None]:
    """The harness's records in order, or the reason the report cannot be trusted."""
    records: list[list[str]] = []
    for line in raw.split(b"\n"):
        if not line:
            continue
        data, _, mac = line.rpartition(b"\t")
        if not data or not hmac.compare_digest(mac, hmac.new(key, data, "sha256").hexdigest().encode("ascii")):
            return records, "the report carries a record the harness did not sign"
        records.append(data.decode("utf-8", "replace").split("\t"))
    return records, None


def _exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    # bwrap passes the child's status on; a signal shows as 128 + its number.
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if number:
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"exit status {returncode}"
    return f"exit status {returncode}"


def _signal_of(returncode: int | None) -> int | None:
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    return returncode - 128 if returncode > 128 else None


_BLOCKED_MARKERS = ("PermissionError", "BlockingIOError", "Read-only file system", "Network is unreachable",
                    "sandbox:", "Operation not permitted")


def _verdict(records: list[list[str]], returncode: int | None, stderr: str) -> _Verdict:
    """What the signed report says, read with the exit status: every test to its end, or why not."""
    tests: list[TestOutcome] = []
    started = code_ok = ended = False
    code_error = ""
    expected = -1
    for record in records:
        tag = record[0]
        if tag == "S" and not started:
            started, expected = True, int(record[1])
        elif tag == "C":
            code_ok, code_error = record[1] == "ok", record[2] if len(record) > 2 else ""
        elif tag == "T" and len(record) >= 7 and int(record[1]) == len(tests):
            line = int(record[5]) if record[5].isdigit() else 0
            tests.append(TestOutcome(int(record[1]), record[3], record[2] == "pass", record[4], line, record[6]))
        elif tag == "E":
            ended = int(record[1]) == len(tests) and (not code_ok or len(tests) == expected)
    signalled = _signal_of(returncode)
    # "X": the harness saw the code's process die, hang past the wall clock or break the protocol.
    gone = next((record for record in records if record[0] == "X" and len(record) >= 3), None)
    if gone is not None and not ended:
        if gone[1] == "timeout":
            return _Verdict("timeout", "wall-clock limit reached while the tests waited for the code", tests)
        if gone[1] == "signal" and gone[2].isdigit():
            signalled = int(gone[2])
            returncode = 128 + signalled
        elif gone[1] == "exit" and gone[2].isdigit():
            returncode = int(gone[2])
        else:
            return _Verdict("incomplete", f"the tests could not be finished: {gone[2]}", tests)
        if signalled not in (signal.SIGXCPU, signal.SIGXFSZ) and "MemoryError" not in stderr:
            return _Verdict("incomplete", (
                f"the code's process ended before the tests did ({_exit_reason(returncode)}): the code left "
                "early or was killed"
            ), tests)
    if not ended or returncode != 0:
        if signalled == signal.SIGXCPU:
            return _Verdict("cpu_limit", "CPU time limit reached", tests)
        if signalled == signal.SIGXFSZ:
            return _Verdict("output_limit", "file size limit reached", tests)
        if "MemoryError" in stderr:
            return _Verdict("memory_limit", "memory limit reached", tests)
        return _Verdict("incomplete", (
            f"the harness did not report every test ({_exit_reason(returncode)}): the code left early or was killed"
        ), tests)
    failure = code_error if not code_ok else next((t.error for t in tests if not t.passed), "")
    if not code_ok:
        reason = f"the code raised {code_error}" if started else code_error
    elif failure:
        first = next(t for t in tests if not t.passed)
        at = f", at line {first.line}" if first.line else ""
        at += f": {first.line_source}" if first.line_source and first.line_source != first.source.strip() else ""
        reason = f"test {first.index + 1} failed: {first.source}{at} ({first.error})"
    else:
        return _Verdict("passed", f"all {len(tests)} tests passed", tests)
    if failure.startswith("MemoryError"):
        return _Verdict("memory_limit", reason, tests)
    if any(marker in failure for marker in _BLOCKED_MARKERS):
        return _Verdict("blocked", reason, tests)
    return _Verdict("failed", reason, tests)


def split_tests(tests: str) -> list[tuple[str, int]]:
    """The tests' top-level statements as (source, first line), each judged on its own. Statements sharing a
    line (`x = 1; assert x`) stay one unit; a decorated definition starts at its first decorator."""
    lines = tests.splitlines()
    units: list[tuple[int, int]] = []
    for node in ast.parse(tests, "tests.py").body:
        decorators = getattr(node, "decorator_list", [])
        start = min([node.lineno, *(decorator.lineno for decorator in decorators)])
        end = node.end_lineno or node.lineno
        if units and start <= units[-1][1]:
            units[-1] = (units[-1][0], max(end, units[-1][1]))
        else:
            units.append((start, end))
    return [("\n".join(lines[start - 1 : end]), start) for start, end in units]


def _request(code: str, statements: list[tuple[str, int]], key: bytes, limits: SandboxLimits, plan: _Plan,
             report_fd: int) -> bytes:
    """What the harness reads on stdin: the code, the tests, the report's key and fd, and the limits to set."""
    # marshal: built into every Python, so the harness imports nothing to read it; version 4 reads on 3.4+.
    return marshal.dumps({
        "code": code,
        "tests": statements,
        "key": key,
        "confine": plan.bwrap is None,
        "report_fd": report_fd,
        "limits": {
            "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_mb * 1024 * 1024,
            "file_bytes": limits.scratch_mb * 1024 * 1024,
            "processes": limits.processes,
            "wall_seconds": limits.wall_seconds,
        },
    }, 4)


@dataclass
class _Fds:
    """File descriptors of one call, each closed once: when `close` names it, or when the block ends (closing
    one twice could close an fd another thread's sandbox has opened since)."""

    open: set[int] = field(default_factory=set)

    def __enter__(self) -> _Fds:
        return self

    def __exit__(self, *_: object) -> None:
        self.close(*self.open)

    def pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self.open |= {read, write}
        return read, write

    def close(self, *fds: int | None) -> None:
        for fd in {fd for fd in fds if fd in self.open}:
            self.open.remove(fd)
            os.close(fd)


def _seccomp_pipe(fds: _Fds) -> int | None:
    """The read end of a pipe holding the seccomp program for bwrap's --seccomp (None: no table here)."""
    program = seccomp_filter()
    if program is None:
        return None
    read, write = fds.pipe()
    os.write(write, program)  # a few hundred bytes: fits the pipe buffer
    fds.close(write)
    return read


@contextmanager
def _scratch(plan: _Plan) -> Iterator[str | None]:
    """The working directory of a sandbox without namespaces (weaker isolation, explicitly allowed): a throwaway
    one the sandbox user owns, removed afterwards. None under bubblewrap, whose tmpfs is the scratch."""
    if plan.bwrap:
        yield None
        return
    workdir = tempfile.mkdtemp(prefix="prefsmith-sandbox-")
    try:
        if plan.user is not None:
            os.chown(workdir, plan.user, plan.user)
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _pump(proc: subprocess.Popen[bytes], request: bytes, report_fd: int, limits: SandboxLimits,
          deadline: float) -> tuple[dict[int, bytearray], bool, bool]:
    """Write the request and read stdout, stderr and the report until all end: (the bytes read by fd, whether
    the wall clock ran out, whether stdout or stderr passed the output limit). Reading stops at either limit."""
    assert proc.stdin and proc.stdout and proc.stderr
    stdin_fd = proc.stdin.fileno()
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), report_fd: bytearray()}
    pending = memoryview(request)
    os.set_blocking(stdin_fd, False)
    timed_out = overflow = False
    with selectors.DefaultSelector() as selector:
        selector.register(stdin_fd, selectors.EVENT_WRITE)
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and not overflow:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            for selected, _ in selector.select(remaining):
                fd = selected.fd
                if fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending[: 1 << 16]) :]
                    except BrokenPipeError:  # the sandbox died before reading its request
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    selector.unregister(fd)
                    continue
                buffers[fd] += chunk
                overflow = overflow or (fd != report_fd and len(buffers[fd]) > limits.output_bytes)
    return buffers, timed_out, overflow


def _watch(proc: subprocess.Popen[bytes], request: bytes, report_fd: int, limits: SandboxLimits,
           started: float) -> _Capture:
    """One started sandbox from its request to its end, as the host read it; killed and reaped however the
    reading ended."""
    assert proc.stdin and proc.stdout and proc.stderr
    stdout_fd, stderr_fd = proc.stdout.fileno(), proc.stderr.fileno()
    try:
        buffers, timed_out, overflow = _pump(proc, request, report_fd, limits, started + limits.wall_seconds)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the outer bwrap; --die-with-parent takes the rest down
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()

    def text(fd: int) -> str:
        return bytes(buffers[fd][: limits.output_bytes]).decode("utf-8", "replace")

    return _Capture(proc.returncode, text(stdout_fd), text(stderr_fd), bytes(buffers[report_fd]),
                    time.perf_counter() - started, timed_out, overflow)


def _judge(capture: _Capture, key: bytes, limits: SandboxLimits) -> _Verdict:
    """The verdict on what the host read: the wall clock and the output limit first, then whether the harness
    signed every record, then what the signed report says."""
    if capture.timed_out:
        return _Verdict("timeout", f"wall-clock limit of {limits.wall_seconds}s reached")
    if capture.overflow:
        return _Verdict("output_limit", f"more than {limits.output_bytes} bytes of output")
    records, tampered = _read_report(capture.report, key)
    if tampered:
        return _Verdict("tampered", tampered)
    return _verdict(records, capture.returncode, capture.stderr)


def _result(plan: _Plan, verdict: _Verdict, capture: _Capture | None = None) -> SandboxResult:
    """The one way a result is built: the verdict, what the host read (nothing for a call that never started)
    and the isolation the plan provided."""
    read = capture or _Capture()
    return SandboxResult(
        verdict.outcome == "passed", verdict.outcome, verdict.reason, read.returncode, read.stdout, read.stderr,
        read.seconds, list(plan.isolation), list(plan.missing), list(verdict.tests), plan.interpreter,
    )


def run_python(
    code: str,
    tests: str = "",
    limits: SandboxLimits | None = None,
    policy: SandboxPolicy | None = None,
    *,
    _plan: _Plan | None = None,
    _require: bool = True,
) -> SandboxResult:
    """Run `code`, then each top-level statement of `tests`, in a fresh sandbox. Passed means the harness
    reported, signed, that the code and every test ran to their end without an exception."""
    limits = limits or SandboxLimits()
    policy = policy or SandboxPolicy()
    plan = _plan or plan_for(policy)
    problem = isolation_problem(policy) if _require else None
    if problem is not None:
        return _result(plan, _Verdict("refused", problem))
    try:
        statements = split_tests(tests)
    except SyntaxError as exc:
        return _result(plan, _Verdict("failed", f"the tests do not compile: {exc}"))
    key = os.urandom(32)
    with _Fds() as fds, _scratch(plan) as workdir:
        report_read, report_write = fds.pipe()
        seccomp_read = _seccomp_pipe(fds) if plan.bwrap else None
        request = _request(code, statements, key, limits, plan, report_write)
        command = _bwrap_command(plan, limits, seccomp_read) if plan.bwrap else _harness_command(plan)
        child_ends = tuple(fd for fd in (report_write, seccomp_read) if fd is not None)
        started = time.perf_counter()
        try:
            proc = _spawn(command, plan, child_ends, workdir)
        except OSError as exc:
            return _result(plan, _Verdict("refused", f"cannot start the sandbox: {exc}"))
        fds.close(*child_ends)  # our copy of the report's write end would keep its reader from ever seeing EOF
        capture = _watch(proc, request, report_read, limits, started)
    return _result(plan, _judge(capture, key, limits), capture)
