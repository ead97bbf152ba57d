"""Errors a user can cause: the CLI prints their message on one line and exits non-zero.

Every package raises a subclass of `PrefsmithError`; anything else reaching the CLI is a bug in prefsmith.
"""


class PrefsmithError(Exception):
    """Base of the errors a user can cause (bad input, unreachable service); never a prefsmith bug."""

    exit_code = 2


class ConfigError(PrefsmithError):
    """A config file, preset or override is invalid."""


class ModelNotFoundError(PrefsmithError):
    """A model name is neither a prefsmith model, a local folder, nor an available Hugging Face model."""


class StorageError(PrefsmithError):
    """The database is unreachable, not migrated, or refuses an operation."""


class NotFoundError(PrefsmithError):
    """A run, export or other stored object does not exist."""


class ExportError(PrefsmithError):
    """An export cannot be written or read."""


class ReviewError(PrefsmithError):
    """A review of a pair is invalid (unknown decision, no reviewer, a note too long)."""
