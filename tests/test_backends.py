"""The three model backends on the real small model: transformers, vLLM CPU in-process, and the HTTP backend
against a real `vllm serve` that a fixture starts on 127.0.0.1 and stops by PID. No engine is mocked.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, Field, ValidationError

from agents.backends import (
    Backend,
    BackendConfigError,
    BackendUnavailableError,
    BadResponseError,
    ChatRequest,
    ChatResult,
    ContextLengthError,
    InvalidRequestError,
    ParsedAnswer,
    ParseFailure,
    create_backend,
    generate_structured,
)
from agents.backends.vllm_server import VLLMServer, free_port, start_vllm_server
from configs.schema import ModelConfig

MODEL = "smollm2-135m-instruct"
CONTEXT = 1024  # small window: the too-long prompt stays cheap to build and reject
# float32 on every engine: "auto" means bfloat16 where the CPU has bf16 units (AMX, AVX512-BF16), and a
# 135M model greedy-decoded in bf16 wanders off ("What is the capital of France?" -> "L'Étoile, ...")
DTYPE = "float32"
# The in-process vLLM engine and the HTTP backend (against `vllm serve`) start vLLM; all three load the model.
BACKENDS = [
    pytest.param("transformers", marks=pytest.mark.model),
    pytest.param("vllm", marks=[pytest.mark.model, pytest.mark.vllm]),
    pytest.param("openai", marks=[pytest.mark.model, pytest.mark.vllm]),
]


class JudgeRating(BaseModel):
    """The shape of a judge's answer in these tests."""

    score: int = Field(ge=1, le=10)
    # bounded so that the token budget below always covers a complete answer: a grammar guarantees a
    # valid answer only if decoding is not cut off first
    reason: str = Field(max_length=24)


JUDGE_CASES = [
    ("What is the capital of France?", "Paris."),
    ("What is 7 times 8?", "54"),
    ("Name a primary colour.", "Blue."),
    ("How many legs does a spider have?", "Eight."),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees."),
    ("Who wrote Romeo and Juliet?", "Charles Dickens."),
    ("What is the square root of 81?", "9"),
    ("Translate 'hello' to Spanish.", "Hola."),
    ("What gas do plants absorb?", "Oxygen."),
    ("What is 15 minus 6?", "9"),
    ("Which planet is closest to the Sun?", "Mercury."),
    ("How many days are in a leap year?", "365"),
    ("What is H2O?", "Water."),
    ("What is the largest ocean?", "The Atlantic."),
    ("Give a synonym of 'happy'.", "Joyful."),
    ("What is 12 divided by 4?", "3"),
    ("What language is spoken in Brazil?", "Portuguese."),
    ("How many continents are there?", "Seven."),
    ("What is the freezing point of water in Fahrenheit?", "0 degrees."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
]


def judge_request(question: str, answer: str, **sampling: object) -> ChatRequest:
    prompt = (
        f"Question: {question}\nAnswer: {answer}\n"
        'Rate the answer from 1 to 10. Reply as JSON: {"score": <1-10>, "reason": "<a few words>"}'
    )
    return ChatRequest(messages=[{"role": "user", "content": prompt}], **{"max_tokens": 40, **sampling})


def ask(content: str, **sampling: object) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": content}], **sampling)


# ---------------------------------------------------------------------------------------------- engines


@pytest.fixture(scope="session")
def vllm_server_process(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """A real `vllm serve`, started without waiting so that it warms up while the in-process engine loads;
    stopped by PID (its whole process group) at the end of the session."""
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    server = start_vllm_server(small_model_path, MODEL, log, max_model_len=CONTEXT, dtype=DTYPE)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server(vllm_server_process: VLLMServer) -> str:
    """The server's OpenAI base URL, once it answers /health."""
    try:
        return vllm_server_process.wait_ready(timeout_s=300)
    except BackendUnavailableError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def transformers_backend(small_model_path: Path) -> Iterator[Backend]:
    with create_backend(ModelConfig(name=MODEL, backend="transformers", max_model_len=CONTEXT, dtype=DTYPE)) as backend:
        yield backend


@pytest.fixture(scope="session")
def vllm_backend(small_model_path: Path, vllm_server_process: VLLMServer) -> Iterator[Backend]:
    config = ModelConfig(name=MODEL, backend="vllm", max_model_len=CONTEXT, kv_cache_gb=1, dtype=DTYPE)
    with create_backend(config) as backend:
        yield backend


@pytest.fixture(scope="session")
def openai_backend(vllm_server: str) -> Iterator[Backend]:
    config = ModelConfig(name=MODEL, backend="openai", base_url=vllm_server, request_timeout_s=60, max_retries=1)
    with create_backend(config) as backend:
        yield backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(f"{request.param}_backend")


# ---------------------------------------------------------------------------------------------- all backends

PROMPTS = ["What is the capital of France?", "Write one sentence about cats.", "List three colours."]


def test_greedy_answers_are_non_empty(backend: Backend) -> None:
    results = backend.generate([ask(prompt, max_tokens=16) for prompt in PROMPTS])
    assert [result.error for result in results] == [None, None, None]
    for result in results:
        (completion,) = result.completions
        assert completion.text.strip()
        assert 1 <= completion.completion_tokens <= 16
        assert result.prompt_tokens > 10  # the chat template's system turn alone is longer
        if completion.finish_reason == "length":
            assert completion.completion_tokens == 16
    assert "Paris" in results[0].completions[0].text


@pytest.mark.model
@pytest.mark.vllm
def test_backends_render_the_same_prompt(
    transformers_backend: Backend, vllm_backend: Backend, openai_backend: Backend
) -> None:
    """The same chat template on every backend: the server's own rendering counts the same prompt tokens."""
    requests = [ask(prompt, max_tokens=4) for prompt in PROMPTS]
    counts = [
        [result.prompt_tokens for result in backend.generate(requests)]
        for backend in (transformers_backend, vllm_backend, openai_backend)
    ]
    assert counts[0] == counts[1] == counts[2]
    assert len(set(counts[0])) == 3


def test_seeded_sampling_is_reproducible(backend: Backend) -> None:
    request = ask("Tell me a short story about a dragon.", n=3, temperature=1.0, top_p=0.95, seed=7, max_tokens=8)
    first, again = backend.generate([request]), backend.generate([request])
    other = backend.generate([request.model_copy(update={"seed": 8})])
    assert first[0].texts == again[0].texts
    assert len(first[0].completions) == 3
    assert len(set(first[0].texts)) > 1  # the three samples are not one sample repeated
    assert other[0].texts != first[0].texts


def test_stop_strings_and_per_request_budgets(backend: Backend) -> None:
    counting = ask("Count from 1 to 10, separated by commas.", max_tokens=48, stop=["5"])
    short = ask("Write a long poem about the sea.", max_tokens=5)
    long = ask("Write a long poem about the sea.", max_tokens=20, n=2, temperature=0.7, seed=1)
    counted, cut, full = backend.generate([counting, short, long])
    (completion,) = counted.completions
    assert completion.finish_reason == "stop"
    assert "4" in completion.text and "5" not in completion.text
    assert [(c.finish_reason, c.completion_tokens) for c in cut.completions] == [("length", 5)]
    # the padding the short rows get while the longer ones run is never counted as output
    assert all(c.completion_tokens == 20 for c in full.completions if c.finish_reason == "length")
    assert all(c.completion_tokens < 20 for c in full.completions if c.finish_reason == "stop")


STEPS = [
    "A baker makes 26 loaves and sells 5 of them. How many loaves are left? Show your steps.",
    "Mia has 21 stickers and buys 9 more. How many stickers does she have now? Show your steps.",
    "A box holds 9 pencils. How many pencils are in 7 boxes? Show your steps.",
    "A train travels 5 km every hour. How far does it travel in 9 hours? Show your steps.",
]


def test_a_completion_is_abandoned_at_its_first_settled_false_step(backend: Backend) -> None:
    """`abandon_on: [false_step]` ends each sample where the calculator's settled reading finds a false statement
    (the transformers backend while generating, the others after): the text up to it, finish reason `abandoned`,
    never more tokens; every other sample is what it is without the setting (the same seeded draws)."""
    from tools.calculator import settled_false_step

    plain = [ask(q, n=8, temperature=0.8, top_p=0.95, seed=3, max_tokens=48) for q in STEPS]
    ended = backend.generate([r.model_copy(update={"abandon_on": ["false_step"]}) for r in plain])
    abandoned = 0
    for whole, cut in zip(backend.generate(plain), ended, strict=True):
        assert whole.error is None and cut.error is None
        for w, c in zip(whole.completions, cut.completions, strict=True):
            kept = settled_false_step(w.text)
            if kept is None:
                assert c == w
                continue
            abandoned += 1
            assert (c.text, c.finish_reason) == (kept, "abandoned")
            assert c.completion_tokens <= w.completion_tokens
    assert abandoned >= 2, "the model writes false steps to these at this temperature"


def test_json_schema_answers_validate(backend: Backend, record_property: pytest.RecordProperty) -> None:
    schema = JudgeRating.model_json_schema()
    requests = [judge_request(question, answer, json_schema=schema) for question, answer in JUDGE_CASES]
    results = backend.generate(requests)
    valid = 0
    for result in results:
        assert result.error is None
        try:
            JudgeRating.model_validate_json(result.completions[0].text)
            valid += 1
        except ValidationError:
            pass
    share = valid / len(JUDGE_CASES)
    record_property("json_schema_valid_share", share)
    print(f"\n{type(backend).__name__}: {valid}/{len(JUDGE_CASES)} schema-valid answers")
    assert share == 1.0


def test_structured_answers_and_typed_parse_failures(backend: Backend) -> None:
    questions = JUDGE_CASES[:2]
    requests = [judge_request(question, answer) for question, answer in questions]
    truncated = judge_request(*JUDGE_CASES[3], max_tokens=3)  # no JSON object fits in 3 tokens
    empty = ChatRequest(messages=[])
    results = generate_structured(backend, [*requests, truncated, empty], JudgeRating, retries=2)
    for result in results[:2]:
        assert isinstance(result, ParsedAnswer)
        assert isinstance(result.value, JudgeRating)
        assert result.attempts == 1
        assert JudgeRating.model_validate_json(result.raw) == result.value
    failed, rejected = results[2], results[3]
    assert isinstance(failed, ParseFailure) and failed.error is None
    assert failed.attempts == 3 and len(failed.raw) == 3 and len(failed.errors) == 3
    assert all(raw.startswith("{") for raw in failed.raw)  # constrained, then cut off by the budget
    assert isinstance(rejected, ParseFailure) and isinstance(rejected.error, InvalidRequestError)
    assert rejected.attempts == 1 and "empty message list" in rejected.reason


def test_bad_requests_fail_alone(backend: Backend) -> None:
    too_long = ask("hello " * (CONTEXT + 100), max_tokens=8)
    good = ask("What is the capital of France?", max_tokens=12)
    results = backend.generate([ChatRequest(messages=[]), too_long, good])
    assert isinstance(results[0].error, InvalidRequestError)
    assert "empty message list" in str(results[0].error)
    assert isinstance(results[1].error, ContextLengthError)
    assert results[2].ok and "Paris" in results[2].completions[0].text


# ---------------------------------------------------------------------------------------------- batching


@pytest.mark.model
def test_concurrent_callers_share_one_engine_call(transformers_backend: Backend) -> None:
    backend = transformers_backend
    prompts = ["Hi.", "What is two plus two?", "Name the largest planet in the solar system, please."]
    answers: dict[int, object] = {}
    before = backend.engine_calls

    def call(index: int) -> None:
        answers[index] = backend.generate([ask(prompts[index], max_tokens=4)])

    with backend._engine_lock:  # keep the engine busy while three callers arrive
        threads = [threading.Thread(target=call, args=(index,)) for index in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(backend._queue) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=60)
    assert backend.engine_calls - before == 1
    expected = [len(backend.prompt_ids(ask(prompt))) for prompt in prompts]
    assert [answers[index][0].prompt_tokens for index in range(3)] == expected


@pytest.mark.model
def test_a_batch_answers_as_each_request_would_alone(transformers_backend: Backend) -> None:
    """Rows of very different prompt and answer lengths, greedy, seeded and grammar-bound, share one decode
    loop that drops each row as it ends, whether they start it together or join it one by one while a long
    answer decodes: every answer is the one the request gets on its own."""
    backend = transformers_backend
    requests = [
        ask("Hi.", max_tokens=3),
        ask("Write a long poem about the sea, the wind and the ships that cross it at night.", max_tokens=24),
        ask("List three colours.", n=2, temperature=0.8, top_p=0.9, seed=3, max_tokens=12),
        judge_request(*JUDGE_CASES[1], json_schema=JudgeRating.model_json_schema()),
        ask("Count from 1 to 10, separated by commas.", max_tokens=30, stop=["6"]),
    ]
    before = backend.engine_calls
    together = backend.generate(requests)
    assert backend.engine_calls - before == 1
    alone = [backend.generate([request])[0] for request in requests]
    summary = [[(c.text, c.finish_reason, c.completion_tokens) for c in r.completions] for r in together]
    assert summary == [[(c.text, c.finish_reason, c.completion_tokens) for c in r.completions] for r in alone]
    assert summary[0][0][1:] == ("length", 3) and summary[1][0][1:] == ("length", 24)  # rows of unequal length
    JudgeRating.model_validate_json(summary[3][0][0])

    # the same requests, each joining the loop of a long answer at a later step (wider and narrower prompts)
    joined_before = backend.joined_waves
    with LongAnswer(backend) as long:
        joining: list[list[ChatResult]] = [[] for _ in requests]
        callers = []
        for index, request in enumerate(requests):
            callers.append(threading.Thread(target=lambda i=index, r=request: joining[i].extend(backend.generate([r]))))
            callers[-1].start()
            wait_until(lambda i=index: backend.joined_waves - joined_before > i)
        for caller in callers:
            caller.join(timeout=120)
        assert long.running(), "the long answer ended before every request had joined and finished"
    assert backend.joined_waves - joined_before == len(requests)
    assert [[(c.text, c.finish_reason, c.completion_tokens) for c in r[0].completions] for r in joining] == summary


LONG_STORY = "Write a long story about a lighthouse keeper and the storms of one winter."  # greedy: 200+ tokens


class LongAnswer:
    """A long greedy answer decoding in a thread of its own; entered once its admission wave is in the loop,
    so the requests made inside join a loop that is running."""

    def __init__(self, backend: Backend, max_tokens: int = 200) -> None:
        self.backend, self.done = backend, threading.Event()
        self.request = ask(LONG_STORY, max_tokens=max_tokens)
        self.results: list[ChatResult] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            self.results = self.backend.generate([self.request])
        finally:
            self.done.set()

    def running(self) -> bool:
        return not self.done.is_set()

    def __enter__(self) -> LongAnswer:
        before = self.backend.engine_calls
        self.thread.start()
        wait_until(lambda: self.backend.engine_calls > before)
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()


def wait_until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.model
def test_a_final_form_stop_waits_for_a_decimal_to_end(transformers_backend: Backend) -> None:
    """The final-form pattern matches "The answer is 12." while "12.75." is still being written (digits and the
    point are tokens of their own): the stop waits one token to see that it is the sentence's end."""
    from agents.game import FINAL_FORM_STOPS

    request = ask("Say exactly this sentence: 'The answer is 12.75.' Then explain why.", max_tokens=40,
                  stop_patterns=FINAL_FORM_STOPS["arithmetic"])
    (result,) = transformers_backend.generate([request])
    (completion,) = result.completions
    assert (completion.text, completion.finish_reason) == ("The answer is 12.75.", "stop")


@pytest.mark.model
def test_a_short_request_joins_a_running_loop_and_returns_first(transformers_backend: Backend) -> None:
    """Continuous batching: a request made while a long answer decodes joins its loop at the next step and
    returns as soon as its own tokens are out, not when the long answer ends."""
    backend = transformers_backend
    calls, joined = backend.engine_calls, backend.joined_waves
    with LongAnswer(backend) as long:
        short = backend.generate([ask("What is the capital of France?", max_tokens=4)])
        returned_first = long.running()
    assert returned_first, "the short request waited for the long one"
    assert backend.joined_waves - joined == 1 and backend.engine_calls - calls == 2
    assert [(c.finish_reason, c.completion_tokens) for c in short[0].completions] == [("length", 4)]
    assert [(c.finish_reason, c.completion_tokens) for c in long.results[0].completions] == [("length", 200)]


@pytest.mark.model
def test_grammar_bound_requests_join_a_loop_of_free_text(transformers_backend: Backend) -> None:
    """JSON-schema rows joining free-text rows in two waves (the grammar bitmask is made, then grown) answer
    valid JSON, and the free-text rows are not constrained by it."""
    backend = transformers_backend
    schema = JudgeRating.model_json_schema()
    joined = backend.joined_waves
    with LongAnswer(backend) as long:
        first = backend.generate([judge_request(*case, json_schema=schema) for case in JUDGE_CASES[:2]])
        second = backend.generate([judge_request(*case, json_schema=schema) for case in JUDGE_CASES[2:5]])
        assert long.running()
    assert backend.joined_waves - joined == 2
    for result in [*first, *second]:
        JudgeRating.model_validate_json(result.completions[0].text)
    assert not long.results[0].completions[0].text.startswith("{")


@pytest.mark.model
def test_max_batch_size_caps_the_requests_decoding_at_once(
    transformers_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for two requests, the third of one call waits in the queue and joins when the first ends.
    `Backend.generate` (the base) still runs the same requests as closed engine calls, with the same answers."""
    backend = transformers_backend
    monkeypatch.setattr(backend, "max_batch_size", 2)
    requests = [ask("Hi.", max_tokens=2), ask("List three colours.", max_tokens=10), ask("Name a fruit.", max_tokens=6)]
    calls, joined = backend.engine_calls, backend.joined_waves
    results = backend.generate(requests)
    assert backend.engine_calls - calls == 2 and backend.joined_waves - joined == 1
    assert [r.texts for r in results] == [backend.generate([request])[0].texts for request in requests]
    calls = backend.engine_calls
    closed = Backend.generate(backend, requests)  # the base protocol's closed engine calls: two and two only
    assert backend.engine_calls - calls == 2 and [r.texts for r in closed] == [r.texts for r in results]


@pytest.mark.model
def test_caches_that_cannot_be_laid_side_by_side_admit_between_loops(
    transformers_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose KV cache cannot be padded and joined (sliding-window layers) prefills each wave padded
    and admits nothing mid-loop: a request made while the loop runs waits for it to drain, then is answered."""
    from agents.backends import local_transformers

    monkeypatch.setattr(local_transformers, "_side_by_side", lambda cache: False)
    backend = transformers_backend
    calls, joined = backend.engine_calls, backend.joined_waves
    with LongAnswer(backend, max_tokens=40) as long:
        short = backend.generate([ask("What is the capital of France?", max_tokens=4)])
        assert not long.running()
    assert backend.engine_calls - calls == 2 and backend.joined_waves == joined
    assert [(c.finish_reason, c.completion_tokens) for c in short[0].completions] == [("length", 4)]
    assert [(c.finish_reason, c.completion_tokens) for c in long.results[0].completions] == [("length", 40)]


@pytest.mark.model
def test_a_failure_in_the_loop_reaches_every_caller(
    transformers_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside the loop (here while a joining request is prefilled) is raised to every caller
    the loop had taken; none is left waiting, and the next call starts a fresh loop."""
    backend = transformers_backend
    joined = backend.joined_waves
    step = backend._step

    def failing_step(*args: object) -> object:
        if backend.joined_waves == joined and backend._loop.batch is not None and len(backend._loop.orders) > 1:
            raise RuntimeError("engine on fire")
        return step(*args)

    monkeypatch.setattr(backend, "_step", failing_step)
    failures: list[BaseException] = []

    def call(request: ChatRequest) -> None:
        try:
            backend.generate([request])
        except RuntimeError as exc:
            failures.append(exc)

    first = threading.Thread(target=call, args=(ask(LONG_STORY, max_tokens=200),))
    before = backend.engine_calls
    first.start()
    wait_until(lambda: backend.engine_calls > before)
    second = threading.Thread(target=call, args=(ask("Hi.", max_tokens=4),))
    second.start()
    for thread in (first, second):
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert [str(failure) for failure in failures] == ["engine on fire"] * 2
    monkeypatch.undo()
    assert backend.generate([ask("Hi.", max_tokens=2)])[0].ok


# ---------------------------------------------------------------------------------------------- HTTP failures


class _BadServer(BaseHTTPRequestHandler):
    """A broken OpenAI-compatible server: how it answers depends on the request's message."""

    hits: dict[str, int] = {}

    def do_POST(self) -> None:  # the name http.server dispatches to
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = body["messages"][-1]["content"]
        _BadServer.hits[mode] = _BadServer.hits.get(mode, 0) + 1
        if mode == "overloaded":
            self._send(503, b'{"error": {"message": "overloaded"}}', "application/json")
        elif mode == "garbage":
            self._send(200, b"<html>definitely not json", "text/html")
        elif mode == "wrong-shape":
            self._send(200, b'{"result": "no choices here"}', "application/json")
        else:
            answer = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
            self._send(200, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bad_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BadServer)
    _BadServer.hits = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_garbage_and_overload_are_typed_errors(bad_server: str) -> None:
    config = ModelConfig(name=MODEL, backend="openai", base_url=bad_server, max_retries=2, request_timeout_s=10)
    with create_backend(config) as backend:
        results = backend.generate([ask(mode) for mode in ("garbage", "wrong-shape", "overloaded", "fine")])
    assert isinstance(results[0].error, BadResponseError)
    assert isinstance(results[1].error, BadResponseError)
    assert isinstance(results[2].error, BackendUnavailableError) and "503" in str(results[2].error)
    assert _BadServer.hits["overloaded"] == 3  # one try and two bounded retries
    assert results[3].ok and results[3].texts == ["fine"]


def test_unreachable_server_is_a_typed_error() -> None:
    config = ModelConfig(name=MODEL, backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    with create_backend(config) as backend:
        results = backend.generate([ask("hello"), ChatRequest(messages=[])])
    assert isinstance(results[0].error, BackendUnavailableError) and "cannot reach" in str(results[0].error)
    assert isinstance(results[1].error, InvalidRequestError)


def test_openai_backend_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendConfigError, match="base_url"):
        create_backend(ModelConfig(backend="openai"))
    monkeypatch.delenv("PREFSMITH_TEST_KEY", raising=False)
    with pytest.raises(BackendConfigError, match=r"\$PREFSMITH_TEST_KEY"):
        create_backend(
            ModelConfig(backend="openai", base_url="http://127.0.0.1:1/v1", api_key_env="PREFSMITH_TEST_KEY")
        )


def _draw_with_a_full_sort(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Top-p sampling as its definition reads: every token ranked, the smallest prefix reaching top_p kept."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    ranked, order = torch.sort(probs, descending=True)
    outside = torch.cumsum(ranked, dim=-1) - ranked >= top_p
    ranked[outside] = 0.0
    return int(torch.multinomial(torch.zeros_like(probs).scatter_(0, order, ranked), 1, generator=generator))


@pytest.mark.slow
@pytest.mark.parametrize("spread", [0.5, 3.0, 8.0])
def test_top_p_draws_the_token_a_full_sort_draws(spread: float) -> None:
    """The transformers engine ranks only the first tokens to find a top-p nucleus: narrow nuclei (peaked
    logits), nuclei wider than its guess (near-flat logits: it falls back to a full sort) and the ones between
    draw, seed for seed, the token that ranking the whole 49k vocabulary draws."""
    from agents.backends.local_transformers import NUCLEUS_GUESS, _draw

    logits = torch.randn(40, 49152, generator=torch.Generator().manual_seed(7)) * spread
    nucleus_sizes = []
    for i, row in enumerate(logits):
        for top_p in (0.5, 0.9, 0.95, 0.999):
            ours = _draw(row, 0.8, top_p, torch.Generator().manual_seed(i))
            reference = _draw_with_a_full_sort(row, 0.8, top_p, torch.Generator().manual_seed(i))
            assert ours == reference, (i, top_p)
            ranked = torch.sort(torch.softmax(row / 0.8, -1), descending=True).values
            nucleus_sizes.append(int((torch.cumsum(ranked, -1) - ranked < top_p).sum()))
    if spread == 0.5:
        assert min(nucleus_sizes) > NUCLEUS_GUESS  # every draw took the fallback
    if spread == 8.0:
        assert max(nucleus_sizes) < NUCLEUS_GUESS  # every draw took the top-k path
