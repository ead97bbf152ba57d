"""The retrieval tool: BM25 search over a local corpus the user points at (a folder of .txt/.md files or a
JSONL file with a `text` field), returning the best passages as evidence for the judge.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from configs.errors import PrefsmithError
from tools.base import Evidence, JudgeTool, PromptContext

_TOKEN = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset("a an and are as at be by for from in is it of on or that the this to was were with".split())


class CorpusError(PrefsmithError):
    """The retrieval corpus is missing or unreadable."""


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


@dataclass(frozen=True)
class Passage:
    source: str
    text: str


def load_passages(path: str | Path, max_words: int = 120) -> list[Passage]:
    """Paragraphs (split to at most `max_words` words) of every .txt/.md file under `path`, or the `text`
    field of every line of a JSONL file."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(f"retrieval corpus {root} does not exist")
    passages: list[Passage] = []
    if root.is_file() and root.suffix == ".jsonl":
        for lineno, line in enumerate(root.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CorpusError(f"{root}:{lineno}: expected a JSON object with a 'text' field") from None
            passages.extend(_split(f"{root.name}:{lineno}", str(text), max_words))
        return passages
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".md"))
    for file in files:
        for number, paragraph in enumerate(re.split(r"\n\s*\n", file.read_text(encoding="utf-8")), 1):
            passages.extend(_split(f"{file.name}#{number}", paragraph, max_words))
    return passages


def _split(source: str, text: str, max_words: int) -> list[Passage]:
    words = text.split()
    return [Passage(source, " ".join(words[i : i + max_words])) for i in range(0, len(words), max_words)]


class BM25Index:
    """Okapi BM25 (k1, b) over passages; scores are comparable within one query."""

    def __init__(self, passages: list[Passage], k1: float = 1.5, b: float = 0.75) -> None:
        self.passages, self.k1, self.b = passages, k1, b
        self.docs = [Counter(tokenize(p.text)) for p in passages]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg_length = sum(self.lengths) / max(len(self.docs), 1)
        document_frequency: Counter[str] = Counter()
        for doc in self.docs:
            document_frequency.update(doc.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in document_frequency.items()}

    def search(self, query: str, k: int = 3) -> list[tuple[float, Passage]]:
        terms = tokenize(query)
        scored = []
        for doc, length, passage in zip(self.docs, self.lengths, self.passages, strict=True):
            score = 0.0
            for term in terms:
                tf = doc.get(term, 0)
                if tf:
                    norm = tf + self.k1 * (1 - self.b + self.b * length / (self.avg_length or 1))
                    score += self.idf[term] * tf * (self.k1 + 1) / norm
            if score > 0:
                scored.append((score, passage))
        scored.sort(key=lambda item: -item[0])
        return scored[:k]


class RetrievalArgs(BaseModel):
    query: str = Field(description="What to look up.")
    k: int = Field(3, ge=1, le=20, description="Passages to return.")


class RetrievalTool(JudgeTool):
    name: str = "retrieval"
    description: str = "Search the local reference corpus (BM25) and return the best passages."
    args_schema: type[BaseModel] = RetrievalArgs
    corpus: str
    per_candidate = False
    runs_in_process: ClassVar[bool] = True  # the BM25 index is built once and kept

    @cached_property
    def index(self) -> BM25Index:
        return BM25Index(load_passages(self.corpus))

    def _run(self, query: str, k: int = 3) -> dict[str, Any]:
        hits = self.index.search(query, k)
        data = {"passages": [{"source": p.source, "score": round(s, 4), "text": p.text} for s, p in hits]}
        summary = f"{len(hits)} passages" + (f"; best from {hits[0][1].source}" if hits else "")
        return Evidence(tool=self.name, ok=True, summary=summary, data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        if candidate is not None:
            return None
        return {"query": prompt.meta.get("query", prompt.text), "k": 3}
