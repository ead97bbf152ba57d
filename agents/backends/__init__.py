"""Model backends: the one protocol (chat requests in, completions out) every player talks through,
and `create_backend`, which builds the engine a `ModelConfig` names (transformers, vLLM, OpenAI HTTP).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agents.backends.errors import (
    BackendConfigError,
    BackendError,
    BackendUnavailableError,
    BadResponseError,
    ContextLengthError,
    EngineError,
    InvalidRequestError,
)
from agents.backends.protocol import Backend, ChatMessage, ChatRequest, ChatResult, Completion
from agents.backends.structured import ParsedAnswer, ParseFailure, StructuredResult, generate_structured
from configs.schema import ModelConfig

__all__ = [
    "Backend",
    "BackendFactory",
    "BackendConfigError",
    "BackendError",
    "BackendUnavailableError",
    "BadResponseError",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "Completion",
    "ContextLengthError",
    "EngineError",
    "InvalidRequestError",
    "ParseFailure",
    "ParsedAnswer",
    "StructuredResult",
    "create_backend",
    "generate_structured",
]


BackendFactory = Callable[[ModelConfig], Backend]


def create_backend(model_config: ModelConfig, *, record_to: str | Path | None = None) -> Backend:
    """The backend `model_config.backend` names, loaded and ready. Engines are imported here, not at package
    import, so that a player using one backend never pays for (or needs) the others.

    `record_to` wraps it in a `RecordingBackend` that appends every engine call to that file (benchmarks
    replay them); `functools.partial(create_backend, record_to=...)` is a factory Ray can ship to an actor.
    """
    backend: Backend
    if model_config.backend == "transformers":
        from agents.backends.local_transformers import TransformersBackend

        backend = TransformersBackend(model_config)
    elif model_config.backend == "vllm" and model_config.vllm_engine == "async":
        from agents.backends.vllm_async import VLLMAsyncBackend

        backend = VLLMAsyncBackend(model_config)
    elif model_config.backend == "vllm":
        from agents.backends.vllm_inprocess import VLLMBackend

        backend = VLLMBackend(model_config)
    else:
        from agents.backends.openai_compatible import OpenAICompatibleBackend

        backend = OpenAICompatibleBackend(model_config)
    if record_to is None:
        return backend
    from agents.backends.recording import RecordingBackend

    return RecordingBackend(backend, record_to)
