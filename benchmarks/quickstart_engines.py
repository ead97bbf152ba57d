"""Which engine should serve the quickstart: the quickstart's synthesis as shipped (8 arithmetic problems,
every role on SmolLM2), end to end on the transformers engine and on the vLLM CPU engine (engine start-up
included, a fresh local Ray each), transformers run again last to show the noise. Same machine, one run.

    python benchmarks/quickstart_engines.py

Printed, never asserted.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pairs_per_min import VLLM  # noqa: E402 - after the thread setting, like the other imports here

RUNS = {"transformers": [], "vllm": VLLM, "transformers, again": []}


def main() -> None:
    from configs import load_config
    from pipelines.synthesis.service import synthesize

    folder = tempfile.mkdtemp(prefix="prefsmith-quickstart-")
    print(f"{'engine':<22}{'seconds':>9}{'rounds':>8}{'accepted':>9}{'target tokens':>14}")
    results = {}
    for i, (label, overrides) in enumerate(RUNS.items()):
        started = time.perf_counter()
        report = synthesize(load_config("quickstart", overrides), run_id=f"qs-{i}", db_url=f"sqlite:///{folder}/{i}.db")
        m = report.metrics
        results[label] = {"seconds": round(time.perf_counter() - started, 1), "rounds": m.rounds,
                          "accepted": m.accepted, "target_tokens": m.completion_tokens}
        r = results[label]
        print(f"{label:<22}{r['seconds']:>9}{r['rounds']:>8}{r['accepted']:>9}{r['target_tokens']:>14}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
