"""Tokens/s of each model backend on one workload, and the speedup of batching (all requests in one call vs
one request per call), measured in the same run on the same machine.

    python benchmarks/backends.py [--backends transformers,vllm,openai] [--prompts 16] [--samples 4]
                                  [--max-tokens 64] [--model smollm2-135m-instruct]

The `openai` backend talks to a `vllm serve` this script starts on 127.0.0.1 and stops by PID. Not a test:
the numbers are printed, never asserted. Engines start one after another so they never share the CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPICS = [
    "photosynthesis", "the water cycle", "prime numbers", "black holes", "the printing press", "vaccines",
    "plate tectonics", "compound interest", "the French Revolution", "neural networks", "volcanoes",
    "the Pythagorean theorem", "honey bees", "the internet", "climate change", "the Moon landing",
]  # fmt: skip


@dataclass(frozen=True)
class Measurement:
    backend: str
    startup_s: float
    batched_tokens: int
    batched_s: float
    single_tokens: int
    single_s: float

    @property
    def batched_rate(self) -> float:
        return self.batched_tokens / self.batched_s

    @property
    def single_rate(self) -> float:
        return self.single_tokens / self.single_s


def workload(prompts: int, samples: int, max_tokens: int) -> list:
    from agents.backends import ChatRequest

    return [
        ChatRequest(
            messages=[{"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} to a child."}],
            n=samples,
            temperature=0.8,
            top_p=0.95,
            max_tokens=max_tokens,
            seed=i,
        )
        for i in range(prompts)
    ]


def measure(name: str, start: Callable[[], tuple[Any, Callable[[], None] | None]], requests: list) -> Measurement:
    """`start` returns the backend and what else to stop after it (the server behind an HTTP backend)."""
    started = time.perf_counter()
    backend, stop = start()
    startup = time.perf_counter() - started
    try:
        backend.generate(requests[:1])  # warm-up: first-call allocations and caches stay out of the timings
        started = time.perf_counter()
        batched = backend.generate(requests)
        batched_s = time.perf_counter() - started
        started = time.perf_counter()
        single = [backend.generate([request])[0] for request in requests]
        single_s = time.perf_counter() - started
    finally:
        backend.close()
        if stop is not None:
            stop()
    for result in (*batched, *single):
        if result.error is not None:
            raise RuntimeError(f"{name}: {type(result.error).__name__}: {result.error}")
    return Measurement(
        backend=name,
        startup_s=startup,
        batched_tokens=sum(c.completion_tokens for result in batched for c in result.completions),
        batched_s=batched_s,
        single_tokens=sum(c.completion_tokens for result in single for c in result.completions),
        single_s=single_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="transformers,vllm,openai")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-model-len", type=int, default=1024)
    # one dtype for every engine: "auto" is bfloat16 on CPUs with bf16 units and float32 elsewhere
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from agents.backends import create_backend
    from agents.backends.vllm_server import start_vllm_server
    from agents.catalog import resolve_model
    from configs.schema import ModelConfig

    path = resolve_model(args.model)
    requests = workload(args.prompts, args.samples, args.max_tokens)
    batch = args.prompts * args.samples
    base = {
        "name": args.model,
        "max_model_len": args.max_model_len,
        "max_batch_size": max(args.prompts, 1),
        "dtype": args.dtype,
    }

    def openai_backend():
        log = Path(tempfile.mkdtemp(prefix="prefsmith-bench-")) / "vllm-serve.log"
        server = start_vllm_server(
            path, args.model, log, max_model_len=args.max_model_len, max_num_seqs=batch, dtype=args.dtype
        )
        try:
            base_url = server.wait_ready()
            # the whole batch is in flight at once: on a CPU server one request can wait for all the others
            config = ModelConfig(
                backend="openai", base_url=base_url, max_concurrency=args.prompts, request_timeout_s=900, **base
            )
            return create_backend(config), server.stop
        except BaseException:
            server.stop()
            raise

    factories = {
        "transformers": lambda: (
            create_backend(ModelConfig(backend="transformers", threads=1, **base)),
            None,
        ),
        "vllm": lambda: (create_backend(ModelConfig(backend="vllm", **base)), None),
        "openai": openai_backend,
    }
    print(
        f"workload: {args.prompts} prompts x {args.samples} samples x <= {args.max_tokens} new tokens "
        f"(temperature 0.8, seeded), model {args.model} {args.dtype}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads 1"
    )
    print(
        f"{'backend':<13}{'startup s':>10}{'batched tok':>12}{'batched s':>10}{'batched tok/s':>14}"
        f"{'1-by-1 tok':>11}{'1-by-1 s':>10}{'1-by-1 tok/s':>13}{'batching speedup':>17}",
        flush=True,
    )
    rows = []
    for name in args.backends.split(","):
        try:
            row = measure(name, factories[name], requests)
        except Exception as exc:  # one broken engine must not hide the others' numbers
            print(f"{name:<13}failed: {exc}", flush=True)
            continue
        rows.append(row)
        print(
            f"{row.backend:<13}{row.startup_s:>10.1f}{row.batched_tokens:>12}{row.batched_s:>10.1f}"
            f"{row.batched_rate:>14.1f}{row.single_tokens:>11}{row.single_s:>10.1f}{row.single_rate:>13.1f}"
            f"{row.batched_rate / row.single_rate:>16.2f}x",
            flush=True,
        )
    if not rows:
        raise SystemExit(1)
    fastest = max(rows, key=lambda row: row.batched_rate)
    for row in rows:
        print(f"batched tok/s, {row.backend} vs {fastest.backend}: {row.batched_rate / fastest.batched_rate:.2f}")


if __name__ == "__main__":
    main()
