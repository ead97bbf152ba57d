"""Typed errors of the model backends: raised when a backend cannot be built, returned per request otherwise.

A failure that belongs to one request travels inside that request's `ChatResult`, so the batch goes on.
"""

from __future__ import annotations

from configs.errors import PrefsmithError


class BackendError(PrefsmithError):
    """A model backend cannot serve a request (or cannot be built)."""

    # Exceptions travel as values through Ray; keep them picklable with the message as their only argument.
    def __reduce__(self) -> tuple[type[BackendError], tuple[str]]:
        return (type(self), (str(self),))


class BackendConfigError(BackendError):
    """The model config cannot work: missing base URL, unset API key variable, rejected credentials."""


class InvalidRequestError(BackendError):
    """The request itself is malformed (empty message list, unknown role, unusable schema)."""


class ContextLengthError(InvalidRequestError):
    """The prompt does not fit in the model's context window."""


class BackendUnavailableError(BackendError):
    """The server is unreachable, timed out or kept failing (429/5xx) after the bounded retries."""


class BadResponseError(BackendError):
    """The server answered something that is not an OpenAI-compatible chat completion."""


class EngineError(BackendError):
    """The inference engine rejected or failed this request."""
