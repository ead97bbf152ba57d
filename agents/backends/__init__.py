"""Model backends: the one protocol (chat requests in, completions out) every player talks through,
and `create_backend`, which builds the engine a `ModelConfig` names (transformers, vLLM, OpenAI HTTP).
"""

from __future__ import annotations

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


def create_backend(model_config: ModelConfig) -> Backend:
    """The backend `model_config.backend` names, loaded and ready. Engines are imported here, not at package
    import, so that a player using one backend never pays for (or needs) the others."""
    if model_config.backend == "transformers":
        from agents.backends.local_transformers import TransformersBackend

        return TransformersBackend(model_config)
    if model_config.backend == "vllm":
        from agents.backends.vllm_inprocess import VLLMBackend

        return VLLMBackend(model_config)
    from agents.backends.openai_compatible import OpenAICompatibleBackend

    return OpenAICompatibleBackend(model_config)
