"""Structured answers: a request's answer as a validated pydantic object, or a typed `ParseFailure`.

The backend constrains decoding to the schema where it can; a bounded repair policy (show the model its
invalid answer and the validation error, ask again) covers what constraint alone cannot (truncation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from agents.backends.errors import BackendError
from agents.backends.protocol import Backend, ChatMessage, ChatRequest

Answer = TypeVar("Answer", bound=BaseModel)

_ERROR_CHARS = 600


@dataclass(frozen=True)
class ParsedAnswer(Generic[Answer]):
    value: Answer
    raw: str  # the model's text, kept beside the parsed value for later inspection
    attempts: int


@dataclass(frozen=True)
class ParseFailure:
    """No attempt produced a valid answer. `raw` and `errors` hold every attempt's text and why it failed;
    `error` is set when the backend failed the request itself (then retrying could not help)."""

    raw: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    attempts: int = 0
    error: BackendError | None = None

    @property
    def reason(self) -> str:
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        return f"no valid answer in {self.attempts} attempts; last: {self.errors[-1] if self.errors else '?'}"


StructuredResult = ParsedAnswer[Answer] | ParseFailure


def parse_answer(text: str, schema: type[Answer]) -> Answer:
    """The pydantic object in `text`; tolerates a fenced code block around the JSON (unconstrained models)."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`")
        body = body.removeprefix("json").strip()
    return schema.model_validate_json(body)


def repair_request(request: ChatRequest, bad_answer: str, problem: str, attempt: int) -> ChatRequest:
    """The original conversation plus the invalid answer and what is wrong with it."""
    instruction = (
        f"That answer is not valid: {problem[:_ERROR_CHARS]}\n"
        "Answer again with only a JSON object that follows this schema:\n"
        f"{json.dumps(request.json_schema)}"
    )
    messages = [
        *request.messages,
        ChatMessage(role="assistant", content=bad_answer),
        ChatMessage(role="user", content=instruction),
    ]
    # a new seed per attempt: a sampled retry of the same conversation would otherwise repeat itself
    seed = None if request.seed is None else request.seed + attempt
    return request.model_copy(update={"messages": messages, "seed": seed})


def generate_structured(
    backend: Backend, requests: list[ChatRequest], schema: type[Answer], retries: int = 2
) -> list[StructuredResult[Answer]]:
    """For each request, in order: the first completion that validates against `schema`, or a ParseFailure
    after `1 + retries` attempts. Every attempt of every pending request is one batched `generate` call."""
    json_schema = schema.model_json_schema()
    first = [request.model_copy(update={"json_schema": json_schema}) for request in requests]
    results: list[StructuredResult[Answer] | None] = [None] * len(requests)
    failures: list[ParseFailure] = [ParseFailure() for _ in requests]
    pending = list(range(len(requests)))
    current = dict(enumerate(first))
    for attempt in range(1, retries + 2):
        outcomes = backend.generate([current[index] for index in pending])
        still_pending = []
        for index, outcome in zip(pending, outcomes, strict=True):
            failure = failures[index]
            if outcome.error is not None:
                results[index] = ParseFailure(failure.raw, failure.errors, attempt, outcome.error)
                continue
            problems = []
            for text in outcome.texts:
                try:
                    results[index] = ParsedAnswer(parse_answer(text, schema), text, attempt)
                    break
                except ValidationError as exc:
                    problems.append(str(exc))
            if results[index] is not None:
                continue
            failures[index] = ParseFailure([*failure.raw, *outcome.texts], [*failure.errors, *problems], attempt)
            current[index] = repair_request(first[index], outcome.texts[0], problems[0], attempt)
            still_pending.append(index)
        pending = still_pending
        if not pending:
            break
    for index in pending:
        results[index] = failures[index]
    return [result for result in results if result is not None]
