"""The backend protocol without an engine: request building, per-request error values that survive pickling
(Ray), and the parsing and repair steps of structured answers."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from agents.backends import Backend, ChatRequest, ChatResult, Completion, ContextLengthError, InvalidRequestError
from agents.backends.protocol import check_request
from agents.backends.recording import RecordingBackend, recorded_calls
from agents.backends.structured import parse_answer, repair_request
from configs.schema import SamplingConfig


class Verdict(BaseModel):
    better: int
    why: str


def test_from_sampling_takes_the_run_settings_and_overrides() -> None:
    sampling = SamplingConfig(temperature=0.3, top_p=0.9, max_tokens=77, seed=5)
    request = ChatRequest.from_sampling([{"role": "user", "content": "hi"}], sampling, n=4, seed=9)
    assert (request.temperature, request.top_p, request.max_tokens, request.n, request.seed) == (0.3, 0.9, 77, 4, 9)
    assert request.chat() == [{"role": "user", "content": "hi"}]


def test_malformed_requests_are_found_before_the_engine() -> None:
    assert isinstance(check_request(ChatRequest(messages=[])), InvalidRequestError)
    ends_with_answer = ChatRequest(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert "assistant" in str(check_request(ends_with_answer))
    assert check_request(ChatRequest(messages=[{"role": "user", "content": "q"}])) is None
    with pytest.raises(ValidationError):
        ChatRequest(messages=[{"role": "robot", "content": "q"}])


def test_error_values_survive_pickling() -> None:
    result = ChatResult.failed(ContextLengthError("the prompt has 2000 tokens; the context window holds 1024"))
    copy = pickle.loads(pickle.dumps(result))
    assert type(copy.error) is ContextLengthError and str(copy.error) == str(result.error)
    assert not copy.ok and copy.texts == []


def test_parse_answer_accepts_plain_and_fenced_json() -> None:
    assert parse_answer('{"better": 1, "why": "shorter"}', Verdict) == Verdict(better=1, why="shorter")
    assert parse_answer('```json\n{"better": 2, "why": "x"}\n```', Verdict).better == 2
    with pytest.raises(ValidationError):
        parse_answer('{"better": "first"}', Verdict)


def test_repair_request_shows_the_bad_answer_and_the_schema() -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": "judge"}], seed=3, json_schema=Verdict.model_json_schema()
    )
    repaired = repair_request(request, '{"better": "first"}', "better: not an integer", attempt=1)
    assert [message.role for message in repaired.messages] == ["user", "assistant", "user"]
    assert repaired.messages[1].content == '{"better": "first"}'
    assert "better: not an integer" in repaired.messages[2].content and '"why"' in repaired.messages[2].content
    assert repaired.seed == 4 and request.seed == 3


class EchoBackend(Backend):
    """Answers each request with its own last message: the protocol's plumbing without an engine."""

    supports_json_schema = True

    def __init__(self) -> None:
        super().__init__(max_batch_size=2)

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return [ChatResult([Completion(r.messages[-1].content, "stop", 1)]) for r in requests]


def test_recording_backend_writes_every_engine_call_for_replay(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    recording = RecordingBackend(EchoBackend(), path)
    requests = [
        ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], seed=i, json_schema=Verdict.model_json_schema())
        for i in range(5)
    ]
    results = recording.generate(requests)
    assert [r.texts for r in results] == [[f"q{i}"] for i in range(5)]
    calls = recorded_calls(path)
    assert [len(call) for call in calls] == [5] and recording.engine_calls == 3  # the engine's own batches
    assert [r for call in calls for r in call] == requests, "a replay must send exactly what ran"
    assert recording.supports_json_schema


class MeetingBackend(EchoBackend):
    """An engine that answers only once two callers are inside it at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.both_inside = threading.Barrier(2, timeout=10)

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        self.both_inside.wait()
        return self._generate_batch(requests)


def test_recording_passes_concurrent_calls_through_concurrently(tmp_path: Path) -> None:
    """A continuous-batching engine must see each caller's request as it arrives, recorded or not: the
    recorder never holds one caller back until another's call has ended."""
    recording = RecordingBackend(MeetingBackend(), tmp_path / "calls.jsonl")
    requests = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda r: recording.generate([r]), requests))
    assert [r[0].texts for r in results] == [["q0"], ["q1"]]
    assert sorted(len(call) for call in recorded_calls(tmp_path / "calls.jsonl")) == [1, 1]
