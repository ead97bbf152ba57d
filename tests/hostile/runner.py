"""Runs the hostile corpus, the honest controls and 16 concurrent sandboxes in this process's identity and
prints every result as JSON. Standard library only: test_hostile.py starts it as root and, through runuser,
as an unprivileged user on a system Python (prefsmith's own venv may sit where that user cannot reach).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.hostile.cases import HONEST, HOSTILE, Case  # noqa: E402 - after the path is set
from tools.jail import SandboxLimits, SandboxPolicy, run_python  # noqa: E402

PARALLEL = 16


def _run(case: Case, fill: dict[str, str], policy: SandboxPolicy) -> dict[str, object]:
    limits = SandboxLimits(
        cpu_seconds=2, wall_seconds=case.wall_seconds, processes=case.processes, scratch_mb=32, memory_mb=512
    )
    result = run_python(case.code.format(**fill), case.tests.format(**fill), limits, policy)
    return {**asdict(result), "stdout": result.stdout[-2000:], "stderr": result.stderr[-2000:]}


def _parallel_case(index: int) -> tuple[Case, bool]:
    """Sandbox `index` of 16: its own function, a file in its scratch that no other sandbox may see, a child
    process, and a verdict that depends on `index` (odd ones are wrong)."""
    answer = index * index + (index % 2)
    code = (
        "import os, time\n"
        f"open('mine-{index}', 'w').write('{index}')\n"
        "time.sleep(0.2)\n"
        "pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
        f"def square():\n    return sum({index} for _ in range({index})) + {index % 2}\n"
    )
    tests = f"assert sorted(os.listdir('.')) == ['mine-{index}']\nassert square() == {index * index}"
    return Case(code, tests, frozenset(), processes=2, wall_seconds=20.0), answer == index * index


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("token", "port", "secret-dir", "secret", "host-pid", "python"):
        parser.add_argument(f"--{name}", required=name != "python")
    args = parser.parse_args()
    fill = {"token": args.token, "port": args.port, "secret_dir": args.secret_dir, "secret": args.secret,
            "host_pid": args.host_pid}
    policy = SandboxPolicy(python=args.python)
    results: dict[str, object] = {"uid": os.geteuid()}
    with ThreadPoolExecutor(4) as pool:
        hostile = {name: pool.submit(_run, case, fill, policy) for name, case in HOSTILE.items()}
        honest = {name: pool.submit(_run, case, fill, policy) for name, (case, _) in HONEST.items()}
        results["hostile"] = {name: future.result() for name, future in hostile.items()}
        results["honest"] = {name: future.result() for name, future in honest.items()}
    cases = [_parallel_case(index) for index in range(PARALLEL)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = [pool.submit(_run, case, fill, policy) for case, _ in cases]
        results["parallel"] = [
            {**future.result(), "expected": expected} for future, (_, expected) in zip(futures, cases, strict=True)
        ]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
