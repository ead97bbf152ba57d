"""The instruction-following tool: runs IFEval's (and IFBench's) constraint checkers from the `if-verifiable`
package on a candidate, per instruction strict and loose, as IFEval defines them; verified = all strict.

The package is imported on first use (it takes seconds), made to work offline (its sentence counts use an
untrained Punkt splitter, its downloads are refused) and deterministic (langdetect seeded). The README's
"Instruction following" says how its verdicts compare with the official scorer's.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from configs.errors import PrefsmithError
from tools.base import Evidence, JudgeTool, PromptContext

# A candidate longer than this is not checked: the checkers' regexes and language detection are bounded
# by it, and no answer to a short-answer prompt comes near it.
MAX_CANDIDATE_CHARS = 20_000
MAX_INSTRUCTIONS = 10
LANGDETECT_SEED = 0
SENTENCE_SPLITTER = "nltk PunktSentenceTokenizer, untrained (NLTK's punkt data is not downloaded)"

# Parameters that the checkers compare with counts: a number written as text would fail at check time.
_WHOLE_NUMBERS = {
    "num_sentences", "num_paragraphs", "num_words", "nth_paragraph", "num_placeholders", "num_bullets",
    "num_highlights", "num_sections", "frequency", "let_frequency", "capital_frequency", "N", "small_n", "n",
    "m", "min_words", "max_words", "n_start", "n_end",
}


class InstructionSpecError(PrefsmithError):
    """An instruction id the checkers do not know, or kwargs its checker cannot be built with."""


class _Checkers:
    """The package's registries, imported once, offline and seeded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ifeval: dict[str, Any] | None = None
        self._ifbench: dict[str, Any] | None = None
        self.common: Any = None

    def ifeval(self) -> dict[str, Any]:
        with self._lock:
            if self._ifeval is None:
                self._ifeval = _import_ifeval(self)
            return self._ifeval

    def registry_of(self, instruction_id: str) -> dict[str, Any] | None:
        """The registry that knows `instruction_id` (IFEval's first, then IFBench's), or None."""
        ifeval = self.ifeval()
        if instruction_id in ifeval:
            return ifeval
        with self._lock:
            if self._ifbench is None:
                self._ifbench = _import_ifbench()
            return self._ifbench if instruction_id in self._ifbench else None


def _offline_splitter() -> Any:
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer()


class _OfflineNltk:
    """nltk as the package's checkers see it: the same module, except that `word_tokenize` splits sentences
    with the untrained splitter instead of loading punkt data that is not there."""

    def __init__(self, nltk: Any, splitter: Any) -> None:
        from nltk.tokenize import NLTKWordTokenizer

        self._nltk, self._splitter, self._words = nltk, splitter, NLTKWordTokenizer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nltk, name)

    def word_tokenize(self, text: str, language: str = "english", preserve_line: bool = False) -> list[str]:
        sentences = [text] if preserve_line else self._splitter.tokenize(text)
        return [token for sentence in sentences for token in self._words.tokenize(sentence)]


def _make_offline(util: Any, *modules: Any) -> None:
    import nltk

    splitter = _offline_splitter()
    util._get_sentence_tokenizer = lambda: splitter
    for module in (util, *modules):
        module.nltk = _OfflineNltk(nltk, splitter)


def _import_ifeval(checkers: _Checkers) -> dict[str, Any]:
    # if_verifiable imports `datasets` (its benchmark loader): most of the seconds this takes.
    import langdetect
    from if_verifiable import common
    from if_verifiable.ifeval import instructions_util
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    _make_offline(instructions_util)
    langdetect.DetectorFactory.seed = LANGDETECT_SEED
    langdetect.detect("The language profiles load once, here, under the lock.")
    checkers.common = common
    return dict(INSTRUCTION_DICT)


def _import_ifbench() -> dict[str, Any]:
    import nltk

    # IFBench's module downloads nltk data when imported; a run never fetches anything.
    download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        from if_verifiable.ifbench import instructions, instructions_util
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    finally:
        nltk.download = download
    _make_offline(instructions_util, instructions)
    return dict(INSTRUCTION_DICT)


CHECKERS = _Checkers()


def _build(instruction_id: str, kwargs: dict[str, Any], prompt: str) -> Any:
    """The checker of `instruction_id` built with `kwargs` as the reference scorer builds it (None values
    dropped; checkers that take the prompt are given it)."""
    registry = CHECKERS.registry_of(instruction_id)
    assert registry is not None
    checker = registry[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def check_spec(
    instruction_ids: Any, kwargs_list: Any, where: str, prompt: str = ""
) -> tuple[list[str], list[dict[str, Any]]]:
    """`instruction_ids` and `kwargs_list` checked: known ids, one kwargs object each, every parameter its
    checker needs given (a missing one would be drawn at random) and none it does not take, and a checker
    that builds and runs. Raises InstructionSpecError naming `where` (a file and line, or a prompt)."""
    if not (isinstance(instruction_ids, list) and instruction_ids and all(isinstance(i, str) for i in instruction_ids)):
        raise InstructionSpecError(f"{where}: 'instruction_id_list' must be a non-empty list of instruction ids")
    if len(instruction_ids) > MAX_INSTRUCTIONS:
        raise InstructionSpecError(f"{where}: {len(instruction_ids)} instructions (at most {MAX_INSTRUCTIONS})")
    if kwargs_list is None:
        kwargs_list = [{} for _ in instruction_ids]
    if not (isinstance(kwargs_list, list) and all(isinstance(k, dict | type(None)) for k in kwargs_list)):
        raise InstructionSpecError(f"{where}: 'kwargs' must be a list of objects, one per instruction")
    if len(kwargs_list) != len(instruction_ids):
        raise InstructionSpecError(
            f"{where}: {len(instruction_ids)} instructions but {len(kwargs_list)} kwargs objects (one each)"
        )
    cleaned = []
    for position, (instruction_id, kwargs) in enumerate(zip(instruction_ids, kwargs_list, strict=True)):
        named = f"{where}: instruction {position} ({instruction_id!r})"
        registry = CHECKERS.registry_of(instruction_id)
        if registry is None:
            raise InstructionSpecError(
                f"{named}: unknown instruction id (IFEval's or IFBench's, e.g. 'punctuation:no_comma')"
            )
        given = {k: v for k, v in (kwargs or {}).items() if v is not None}
        parameters = inspect.signature(registry[instruction_id].build_description).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        unknown = sorted(set(given) - set(parameters) - {"self"})
        if unknown and not takes_any:
            raise InstructionSpecError(f"{named}: unknown kwargs {', '.join(unknown)} (takes: "
                                       f"{', '.join(p for p in parameters if p != 'self') or 'none'})")
        needed = [p for p in registry[instruction_id](instruction_id).get_instruction_args_keys() if p != "prompt"]
        missing = [p for p in needed if p not in given]
        if missing:
            raise InstructionSpecError(f"{named}: kwargs lack {', '.join(missing)}")
        for key, value in given.items():
            if key in _WHOLE_NUMBERS and (isinstance(value, bool) or not isinstance(value, int)):
                raise InstructionSpecError(f"{named}: kwargs.{key} must be a whole number, got {value!r}")
        try:
            _build(instruction_id, given, prompt).check_following("A probe. It has two sentences.")
        except LookupError:
            pass  # a checker that needs nltk data this machine lacks: its evidence will say so
        except Exception as exc:  # the checkers raise ValueError, TypeError, KeyError on bad parameters
            raise InstructionSpecError(f"{named}: bad kwargs ({type(exc).__name__}: {exc})") from None
        cleaned.append(given)
    return list(instruction_ids), cleaned


def describe(instruction_id: str, kwargs: dict[str, Any]) -> str:
    """The instruction as its checker words it (IFEval's own phrasing of the constraint)."""
    registry = CHECKERS.registry_of(instruction_id)
    if registry is None:
        raise InstructionSpecError(f"unknown instruction id {instruction_id!r}")
    return str(registry[instruction_id](instruction_id).build_description(**kwargs))


def check_instructions(
    response: str, instruction_ids: Sequence[str], kwargs_list: Sequence[dict[str, Any]], prompt: str
) -> list[dict[str, Any]]:
    """Each instruction's strict and loose pass on `response`, as the package's reference scorer
    (`if_verifiable.common.evaluate_instructions`) decides them; an empty answer fails every instruction."""
    CHECKERS.ifeval()
    common = CHECKERS.common
    response = common.strip_thinking(response)
    variants = common.get_loose_transformations(response) if response.strip() else []
    results = []
    for instruction_id, kwargs in zip(instruction_ids, kwargs_list, strict=True):
        entry: dict[str, Any] = {"id": instruction_id, "kwargs": kwargs, "strict": False, "loose": False}
        if variants:
            try:
                checker = _build(instruction_id, kwargs, prompt)
                entry["strict"] = bool(response.strip() and checker.check_following(response))
                entry["loose"] = any(v.strip() and checker.check_following(v) for v in variants)
            except LookupError as exc:  # nltk data an IFBench checker needs is not installed
                entry["error"] = f"needs nltk data this machine lacks ({_resource(exc)})"
        results.append(entry)
    return results


def _resource(exc: LookupError) -> str:
    """The nltk resource a LookupError names ("stopwords"), without its colour codes and banner."""
    found = re.search(r"Resource\s+(?:\x1b\[\d+m)?['\"]?([\w/.]+)", str(exc))
    return found.group(1) if found else "an nltk resource"


class InstructionChecksArgs(BaseModel):  # type: ignore[no-redef]  # a field named kwargs, as IFEval names it
    candidate: str = Field(description="The answer to check.")
    instruction_id_list: list[str] = Field(description="IFEval instruction ids, e.g. 'punctuation:no_comma'.")
    kwargs: list[dict[str, Any]] = Field(description="The parameters of each instruction, in the same order.")
    prompt: str = Field("", description="The prompt (checkers that compare with it read it).")
    where: str = Field("the prompt", description="What names the prompt in an error.")


class InstructionChecksTool(JudgeTool):
    runs_in_process: ClassVar[bool] = True  # pure Python checks on a bounded text; no code of the candidate runs
    name: str = "instruction_checks"
    description: str = (
        "Check that a candidate follows the prompt's verifiable instructions (IFEval's checkers: word and "
        "sentence counts, formats, keywords, case...); verified when every instruction passes strictly."
    )
    args_schema: type[BaseModel] = InstructionChecksArgs

    def _run(
        self,
        candidate: str,
        instruction_id_list: list[str],
        kwargs: list[dict[str, Any]],
        prompt: str = "",
        where: str = "the prompt",
    ) -> dict[str, Any]:
        ids, cleaned = check_spec(instruction_id_list, kwargs, where, prompt)
        if len(candidate) > MAX_CANDIDATE_CHARS:
            return Evidence(
                tool=self.name, ok=False,
                error=f"candidate of {len(candidate):,} characters is over the {MAX_CANDIDATE_CHARS:,} checked",
            ).model_dump()
        results = check_instructions(candidate, ids, cleaned, prompt)
        errors = [r for r in results if "error" in r]
        strict = sum(r["strict"] for r in results)
        loose = sum(r["loose"] for r in results)
        failed = [r["id"] for r in results if not r["strict"] and "error" not in r]
        summary = f"follows {strict} of {len(results)} instructions strictly ({loose} loosely)"
        if failed:
            summary += f"; fails {', '.join(failed)}"
        data = {"instructions": results, "strict": strict, "loose": loose, "total": len(results),
                "sentence_splitter": SENTENCE_SPLITTER}
        if errors:
            # A check that could not run leaves the candidate unverified unless another one already failed.
            verdict = False if failed else None
            return Evidence(tool=self.name, ok=True, verdict=verdict, summary=summary + "; "
                            + "; ".join(f"{r['id']} {r['error']}" for r in errors), data=data).model_dump()
        return Evidence(tool=self.name, ok=True, verdict=strict == len(results), summary=summary,
                        data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        ids = prompt.meta.get("instruction_id_list")
        if candidate is None or not ids:
            return None
        where = f"prompt {prompt.meta['key']}" if "key" in prompt.meta else f"prompt {prompt.text[:60]!r}"
        return {"candidate": candidate, "instruction_id_list": ids, "kwargs": prompt.meta.get("kwargs") or [],
                "prompt": prompt.text, "where": where}
