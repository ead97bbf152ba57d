"""Per-call overhead of the judge's sandbox: the previous implementation (rlimits + an audit hook, as in git's
`--before` revision, loaded from `git show`) against the current one (bubblewrap namespaces + seccomp +
signed per-test report), on a trivial program, sequentially and 16 at a time.

    python benchmarks/sandbox.py [--calls 60] [--before 9a0f1d7] [--parallel 16]

A call is timed from the caller's side: spawn, run, collect, judge. The program is `x = 1` with one test,
so the figures are the sandbox's own cost, not the candidate's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _previous(revision: str) -> ModuleType:
    """tools/sandbox.py as it was at `revision`, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:tools/sandbox.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="prefsmith-bench-"))
    path = folder / "previous_sandbox.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_sandbox", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _timed(call: Callable[[], bool], calls: int, parallel: int) -> tuple[list[float], int]:
    """Seconds per call, and how many calls did not judge the trivial program correct (an exception counts:
    the previous sandbox's process limit made concurrent calls as root fail each other)."""

    def one(_: int) -> tuple[float, bool]:
        started = time.perf_counter()
        try:
            ok = call()
        except OSError:
            ok = False
        return time.perf_counter() - started, ok

    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, range(calls)))
    return [seconds for seconds, _ in results], sum(not ok for _, ok in results)


def _row(name: str, parallel: int, seconds: list[float], wrong: int) -> str:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    median = statistics.median(seconds) * 1000
    return f"{name:<24} {parallel:>8} {median:>10.1f} {p95 * 1000:>8.1f} {wrong:>6}/{len(seconds)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=60, help="calls per setting")
    # 9a0f1d7 is the last commit with the previous sandbox (rlimits + an audit hook in the judged process).
    parser.add_argument("--before", default="9a0f1d7", help="git revision of the previous sandbox")
    parser.add_argument("--parallel", type=int, default=16, help="concurrent calls in the second setting")
    args = parser.parse_args()

    from tools.jail import run_python

    before = _previous(args.before)
    code, tests = "x = 1", "assert x == 1"
    settings = [
        (f"before ({args.before})", lambda: before.run_python(code, tests).passed),
        ("after (bwrap+seccomp)", lambda: run_python(code, tests).passed),
    ]
    print(f"{os.cpu_count()} CPUs, uid {os.geteuid()}, {args.calls} calls per row")
    print(f"{'sandbox':<24} {'parallel':>8} {'median ms':>10} {'p95 ms':>8} {'wrong verdicts':>14}")
    # The previous sandbox first: as root it counted every process of user nobody against its own process
    # limit, so the current sandbox's exited processes (nobody's, until init reaps them) would fail it.
    for name, call in settings:
        call()  # warm up: imports, the machine probe, page cache
        for parallel in (1, args.parallel):
            print(_row(name, parallel, *_timed(call, args.calls, parallel)), flush=True)
    # What each isolation mechanism costs by itself, for the choice of bubblewrap: the bare interpreter, then
    # the same interpreter in fresh namespaces made by unshare(1) and by bwrap, one call at a time.
    trivial = [sys.executable, "-I", "-S", "-c", "x = 1"]
    mechanisms = [
        ("python alone", trivial),
        ("unshare -Urnpf", ["unshare", "-Urnpf", *trivial]),
        ("bwrap --unshare-all", ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-all", "--die-with-parent",
                                 *trivial]),
    ]
    for name, command in mechanisms:
        print(_row(name, 1, *_timed(lambda c=command: subprocess.run(c).returncode == 0, args.calls, 1)), flush=True)

if __name__ == "__main__":
    main()
