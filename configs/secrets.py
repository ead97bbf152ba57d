"""The one masking function for secrets in text prefsmith prints, logs, stores or submits.

Passwords travel inside URLs (`postgresql://user:PASSWORD@host/db`), alone or inside a command line; every
place that shows such text passes it through `mask_secrets` first.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@ — the password runs to the last '@' of the word, so one containing '@' is hidden whole.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):\S*@")


def mask_secrets(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def masked(value: Any) -> Any:
    """A JSON-like value (a config dump) with `mask_secrets` applied to every string in it."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [masked(item) for item in value]
    return value
