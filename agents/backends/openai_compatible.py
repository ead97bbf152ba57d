"""The OpenAI-compatible HTTP backend (`vllm serve` or any such endpoint), through the `openai` client.

Requests of a batch go out concurrently (bounded), the server batches them; 429/5xx and connection errors
are retried with the client's exponential backoff, a bounded number of times.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from agents.backends.errors import (
    BackendConfigError,
    BackendError,
    BackendUnavailableError,
    BadResponseError,
    ContextLengthError,
    InvalidRequestError,
)
from agents.backends.protocol import Backend, ChatRequest, ChatResult, Completion, check_request
from configs.schema import ModelConfig

# Phrases OpenAI and vLLM use when a prompt does not fit the context window.
_CONTEXT_PHRASES = ("maximum context length", "context length", "context window", "longer than the maximum")


class OpenAICompatibleBackend(Backend):
    """Talks to `config.base_url`, asking for model `config.name` (vLLM: its `--served-model-name`)."""

    supports_json_schema = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.max_batch_size)
        if not config.base_url:
            raise BackendConfigError(f"model {config.name!r} uses backend 'openai' but sets no base_url")
        api_key = "EMPTY"  # servers without authentication (a local `vllm serve`) ignore the key
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env, "")
            if not api_key:
                raise BackendConfigError(
                    f"model {config.name!r} reads its API key from ${config.api_key_env}, which is not set"
                )
        self.base_url = config.base_url
        self.model = config.name
        self.max_retries = config.max_retries
        self.client = openai.OpenAI(
            base_url=config.base_url,
            api_key=api_key,
            timeout=config.request_timeout_s,
            max_retries=config.max_retries,
        )
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="prefsmith-http")

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return list(self._pool.map(self._complete, requests))

    def _complete(self, request: ChatRequest) -> ChatResult:
        error = check_request(request)
        if error is not None:
            return ChatResult.failed(error)
        try:
            response = self.client.chat.completions.create(**self._arguments(request))
        except openai.APIStatusError as exc:
            return ChatResult.failed(self._status_error(exc))
        except openai.APIConnectionError as exc:  # also timeouts, after the bounded retries
            return ChatResult.failed(
                BackendUnavailableError(f"cannot reach {self.base_url} after {self.max_retries} retries: {exc}")
            )
        except openai.APIResponseValidationError as exc:
            return ChatResult.failed(BadResponseError(f"{self.base_url} answered garbage: {exc}"))
        return self._result(request, response)

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": request.chat(),
            "n": request.n,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.seed is not None:
            arguments["seed"] = request.seed
        if request.stop:
            arguments["stop"] = request.stop
        if request.n > 1:
            # usage only counts all choices together; one logprob entry per token counts each choice
            arguments["logprobs"] = True
        if request.json_schema is not None:
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.json_schema, "strict": True},
            }
        return arguments

    def _status_error(self, exc: openai.APIStatusError) -> BackendError:
        message = _server_message(exc)
        status = exc.status_code
        if status in (400, 422):
            if any(phrase in message.lower() for phrase in _CONTEXT_PHRASES):
                return ContextLengthError(f"{self.base_url}: {message}")
            return InvalidRequestError(f"{self.base_url} rejected the request ({status}): {message}")
        if status in (401, 403):
            return BackendConfigError(f"{self.base_url} refused the API key ({status})")
        if status == 404:
            return BackendConfigError(f"{self.base_url} does not serve model {self.model!r} ({status}): {message}")
        if status == 429 or status >= 500:
            return BackendUnavailableError(
                f"{self.base_url} kept answering {status} after {self.max_retries} retries: {message}"
            )
        return BadResponseError(f"{self.base_url} answered {status}: {message}")

    def _result(self, request: ChatRequest, response: Any) -> ChatResult:
        """Check the answer's shape: a server answering 200 with something else is an error, not a crash."""
        try:
            choices = sorted(response.choices, key=lambda choice: choice.index)
            usage = response.usage
            completions = []
            for choice in choices:
                text = choice.message.content
                if not isinstance(text, str) or choice.finish_reason not in ("stop", "length"):
                    raise TypeError(f"choice {choice.index} has content {text!r}, finish {choice.finish_reason!r}")
                if request.n == 1:
                    tokens = int(usage.completion_tokens)
                elif choice.logprobs is not None and choice.logprobs.content is not None:
                    tokens = len(choice.logprobs.content)
                else:  # a server that ignores `logprobs`: the total shared out evenly
                    tokens = int(usage.completion_tokens) // len(choices)
                completions.append(Completion(text=text, finish_reason=choice.finish_reason, completion_tokens=tokens))
            if len(completions) != request.n:
                raise TypeError(f"{len(completions)} choices for n={request.n}")
            return ChatResult(completions=completions, prompt_tokens=int(usage.prompt_tokens))
        except (AttributeError, TypeError, ValueError) as exc:
            return ChatResult.failed(BadResponseError(f"{self.base_url} answered no chat completion: {exc}"))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("message"):
            return str(body["message"])
    return str(exc.message)
