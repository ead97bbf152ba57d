"""The held-out split every layer agrees on: a fixed fifth of the problems of each built-in set (and of the
occupations of the BLS table), chosen by a hash of each one's key, the same on every machine and in every
version. Synthesis never plays held-out problems; `prefsmith eval task` scores models on them, and the debiasing
trainer and `prefsmith eval bias` hold out the same occupations.
"""

from __future__ import annotations

import hashlib

HELD_OUT_ONE_IN = 5


def held_out(key: str) -> bool:
    """Whether the problem named by `key` (its text; an occupation's `occupation_key`) is held out."""
    digest = hashlib.sha256(f"prefsmith held-out split\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_ONE_IN == 0


def in_split(key: str, split: str) -> bool:
    """Whether `key` belongs to `split`: "train", "heldout" or "all"."""
    return split == "all" or held_out(key) == (split == "heldout")


def occupation_key(title: str) -> str:
    """An occupation as the split sees it: case and spacing do not matter ("Registered nurses")."""
    return " ".join(title.lower().split())


def held_out_occupation(title: str) -> bool:
    return held_out(occupation_key(title))
