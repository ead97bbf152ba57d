"""The one backend protocol every player talks through: chat requests in, n completions per request out.

`Backend.generate` is synchronous and thread-safe; requests from concurrent callers share one engine call.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.backends.errors import BackendError, ContextLengthError, InvalidRequestError
from configs.schema import SamplingConfig

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "abandoned"]
# The checks that may end a completion early because its text has already failed (`ChatRequest.abandon_on`).
AbandonCheck = Literal["false_step"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


class ChatRequest(BaseModel):
    """One conversation to complete `n` times. An empty message list is accepted here and answered with a
    per-request `InvalidRequestError`, so that one bad request never stops a batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: list[ChatMessage]
    n: int = Field(1, ge=1, description="Completions to sample.")
    temperature: float = Field(0.0, ge=0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0, description="Most new tokens per completion.")
    seed: int | None = Field(None, description="Makes sampling reproducible on the same backend.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion (not included).")
    stop_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions that end a completion right after their first match (kept): the "
        "transformers backend stops generating there; vLLM and OpenAI-compatible engines know only stop strings, "
        "so their texts are cut there after generating.",
    )
    json_schema: dict[str, Any] | None = Field(None, description="JSON schema the answer must follow.")
    abandon_on: list[AbandonCheck] = Field(
        default_factory=list,
        description="Checks that end a completion as soon as its text fails them beyond repair (`false_step`: a "
        "false arithmetic statement no continuation can change), finish reason `abandoned`, its text kept up to "
        "the failure. The transformers backend stops generating there; other engines' texts are cut after.",
    )

    @classmethod
    def from_sampling(
        cls, messages: list[ChatMessage] | list[dict[str, str]], sampling: SamplingConfig, **overrides: Any
    ) -> ChatRequest:
        """A request sampled with a run's `SamplingConfig`; `overrides` (n, seed, json_schema, ...) win."""
        values: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": sampling.seed,
        }
        values.update(overrides)
        return cls(messages=messages, **values)

    def chat(self) -> list[dict[str, str]]:
        return [message.model_dump() for message in self.messages]


def cut_after_patterns(text: str, patterns: list[str]) -> str | None:
    """`text` up to the end of the earliest match of any of `patterns`; None when none matches."""
    ends = [m.end() for m in (re.search(p, text) for p in patterns) if m is not None]
    return text[: min(ends)] if ends else None


def abandoned_at(text: str, checks: list[AbandonCheck]) -> str | None:
    """The start of `text` to keep when one of `checks` finds it failed beyond repair; None when none does."""
    if "false_step" not in checks:
        return None
    from tools.calculator import settled_false_step  # the calculator's own reading of a statement

    return settled_false_step(text)


def ended_early(request: ChatRequest, result: ChatResult) -> ChatResult:
    """`result` with every completion ended after the request's first stop-pattern match, and at the failure
    that abandons it (`abandon_on`), whichever comes first: what the transformers backend stops at while
    generating, so that every backend keeps the same text."""
    if not (request.stop_patterns or request.abandon_on) or not result.ok:
        return result
    completions = []
    for c in result.completions:
        kept = cut_after_patterns(c.text, request.stop_patterns)
        if kept is not None and kept != c.text:
            c = Completion(kept, "stop", c.completion_tokens)
        failed = abandoned_at(c.text, request.abandon_on)
        completions.append(c if failed is None else Completion(failed, "abandoned", c.completion_tokens))
    return ChatResult(completions, result.prompt_tokens, result.error)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True)
class ChatResult:
    """The answer to one request: its completions, or the typed error that stopped it."""

    completions: list[Completion] = field(default_factory=list)
    prompt_tokens: int = 0
    error: BackendError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def texts(self) -> list[str]:
        return [completion.text for completion in self.completions]

    @classmethod
    def failed(cls, error: BackendError) -> ChatResult:
        return cls(error=error)


def check_request(request: ChatRequest) -> InvalidRequestError | None:
    """Checks every backend makes before a request reaches its engine."""
    if not request.messages:
        return InvalidRequestError("the request has an empty message list")
    if request.messages[-1].role == "assistant":
        return InvalidRequestError("the last message is the assistant's; there is nothing to answer")
    return None


@dataclass
class _Ticket:
    """One caller's requests waiting for an engine call, and where their results land."""

    requests: list[ChatRequest]
    done: threading.Event = field(default_factory=threading.Event)
    results: list[ChatResult] | None = None
    failure: BaseException | None = None


class Backend(ABC):
    """A model behind the protocol. Subclasses implement `_generate_batch` for one engine call; this class
    gathers the requests of concurrent callers so that whoever runs the engine next runs them all at once."""

    supports_json_schema: bool = False

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.engine_calls = 0
        self._engine_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """For each request, in order, its completions or its typed error. Never raises for a bad request."""
        if not requests:
            return []
        ticket = _Ticket(list(requests))
        with self._queue_lock:
            self._queue.append(ticket)
        while not ticket.done.is_set():
            with self._engine_lock:
                if ticket.done.is_set():
                    break
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._serve(batch)
        if ticket.failure is not None:
            raise ticket.failure
        assert ticket.results is not None
        return ticket.results

    def _serve(self, tickets: list[_Ticket]) -> None:
        flat = [request for ticket in tickets for request in ticket.requests]
        try:
            results: list[ChatResult] = []
            for start in range(0, len(flat), self.max_batch_size):
                chunk = flat[start : start + self.max_batch_size]
                self.engine_calls += 1
                results.extend(self._generate_batch(chunk))
        except BaseException as failure:  # a bug in the engine call: every waiting caller sees it
            for ticket in tickets:
                ticket.failure = failure
                ticket.done.set()
            return
        results = [ended_early(request, result) for request, result in zip(flat, results, strict=True)]
        offset = 0
        for ticket in tickets:
            ticket.results = results[offset : offset + len(ticket.requests)]
            offset += len(ticket.requests)
            ticket.done.set()

    @abstractmethod
    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One engine call over `requests`; per-request failures are returned, not raised."""

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing
        """Release the engine (processes, memory, connections)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalBackend(Backend):
    """A backend that tokenizes in this process (transformers, in-process vLLM): the chat template, the
    prompt's token ids and the context-window check live here once."""

    tokenizer: Any
    max_model_len: int

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        text = self.tokenizer.apply_chat_template(request.chat(), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def admit(self, request: ChatRequest) -> list[int] | ChatResult:
        """The prompt's token ids, or the failed result to answer with when the request cannot run."""
        error = check_request(request)
        if error is not None:
            return ChatResult.failed(error)
        ids = self.prompt_ids(request)
        if len(ids) >= self.max_model_len:
            return ChatResult.failed(
                ContextLengthError(f"the prompt has {len(ids)} tokens; the context window holds {self.max_model_len}")
            )
        return ids
