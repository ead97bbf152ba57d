"""Prompt sources: built-in sets that need no download (generated arithmetic of two steps or one, small
coding tasks, occupation prompts, instruction-following tasks) and the user's own JSONL, CSV, Parquet or
`datasets` folders, each row carrying what its tools need (a file in HumanEval's format gives coding prompts
whose `check(candidate)` tests the sandbox runs; a row in IFEval's format, with `instruction_id_list` and
`kwargs`, is checked); and the problems with gold answers that task evaluation measures on.

Rows become `PromptRecord`s (id = sha256 of the messages); bad rows fail with the file, line and field.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import keyword
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configs.errors import ConfigError, PrefsmithError
from configs.schema import PromptSourceConfig
from configs.splits import in_split, occupation_key
from pipelines.instruction_prompts import instruction_prompts
from storage.records import PromptRecord
from tools.answers import as_fraction
from tools.calculator import evaluate
from tools.instruction_checks import check_spec
from training.evaluation.base import EvalError, Problem, ProblemSet
from training.evaluation.instructions import InstructionPrompt, InstructionSet


class PromptSourceError(PrefsmithError):
    """A prompt file is missing, unreadable, or has a row without a usable prompt."""


ARITHMETIC_TEMPLATES = [
    ("A baker makes {a} loaves in the morning and {b} in the afternoon, then sells {c}. "
     "How many loaves are left?", "{a} + {b} - {c}"),
    ("A box holds {a} rows of {b} pencils. How many pencils are in {c} boxes?", "{a} * {b} * {c}"),
    ("Mia has {a} stickers. She gives {b} to each of her {c} friends. How many stickers does she have left?",
     "{a} - {b} * {c}"),
    ("A train travels {a} km every hour for {b} hours, then {c} km more. How far does it travel in total?",
     "{a} * {b} + {c}"),
    ("There are {a} apples shared equally among {b} baskets, and {c} apples are added to each basket. "
     "How many apples are in one basket?", "{a} / {b} + {c}"),
]
# One operation each: problems SmolLM2-135M (the quickstart's model) gets right often enough to make pairs.
ONE_STEP_TEMPLATES = [
    ("A baker makes {a} loaves and sells {c} of them. How many loaves are left?", "{a} - {c}"),
    ("A box holds {b} pencils. How many pencils are in {c} boxes?", "{b} * {c}"),
    ("Mia has {a} stickers and buys {b} more. How many stickers does she have now?", "{a} + {b}"),
    ("A train travels {b} km every hour. How far does it travel in {c} hours?", "{b} * {c}"),
    ("There are {a} apples shared equally among {b} baskets. How many apples are in one basket?", "{a} / {b}"),
]
# Asks for the explicit final form the reference-answer check reads first (tools.answers.committed_answer). In the
# question rather than a system message: measured on SmolLM2-135M, a small model follows it far more often there.
ANSWER_INSTRUCTION = "End your reply with: The answer is N."


Split = str  # "train", "heldout" or "all" (configs.schema.PromptSourceConfig.split; see configs.splits)


def arithmetic_prompts(
    n: int = 50, seed: int = 0, split: Split = "all", templates: list[tuple[str, str]] = ARITHMETIC_TEMPLATES
) -> list[dict[str, Any]]:
    """`n` distinct arithmetic word problems of `split` from `templates`, with integer answers, reproducible
    from `seed`."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    misses = 0  # draws in a row that repeated an earlier problem or fell in the other split
    while len(rows) < n:
        if misses > 5000:
            raise ConfigError(
                f"prompts: the built-in arithmetic set ran out of distinct problems after {len(rows)} (asked for {n})"
            )
        template, expression = templates[len(rows) % len(templates)]
        a, b, c = rng.randint(2, 40), rng.randint(2, 12), rng.randint(1, 9)
        if "/" in expression:
            a = b * rng.randint(2, 12)
        if expression.startswith("{a} - {b} * {c}"):
            a = b * c + rng.randint(1, 30)
        if expression.startswith("{a} + {b} - {c}"):
            c = rng.randint(1, a + b - 1)
        if expression == "{a} - {c}":
            c = rng.randint(1, min(9, a - 1))
        expr = expression.format(a=a, b=b, c=c)
        prompt = f"{template.format(a=a, b=b, c=c)} {ANSWER_INSTRUCTION}"
        if prompt in seen or not in_split(prompt, split):
            misses += 1
            continue
        misses = 0
        seen.add(prompt)
        answer = evaluate(expr)
        rows.append({
            "prompt": prompt,
            "answer": int(answer),
            "expression": expr,
            "answer_kind": "numeric",
            "task": "arithmetic",
        })
    return rows


CODING_TASKS = [
    ("is_even(n)", "returns True when the integer n is even",
     "assert is_even(4) and not is_even(7) and is_even(0)"),
    ("reverse_words(s)", "returns the words of the string s in reverse order, joined by single spaces",
     "assert reverse_words('a b c') == 'c b a'\nassert reverse_words('hello') == 'hello'"),
    ("count_vowels(s)", "returns how many vowels (a, e, i, o, u, either case) the string s has",
     "assert count_vowels('Hello World') == 3\nassert count_vowels('xyz') == 0"),
    ("factorial(n)", "returns n! for an integer n >= 0",
     "assert factorial(0) == 1 and factorial(5) == 120"),
    ("fizzbuzz(n)", "returns 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for both, "
     "else str(n)", "assert [fizzbuzz(i) for i in (3, 5, 15, 7)] == ['Fizz', 'Buzz', 'FizzBuzz', '7']"),
    ("is_palindrome(s)", "returns True when s reads the same backwards, ignoring case and spaces",
     "assert is_palindrome('Never odd or even') and not is_palindrome('abc')"),
    ("max_of(xs)", "returns the largest number of a non-empty list without using max()",
     "assert max_of([3, 9, 2]) == 9 and max_of([-5]) == -5"),
    ("sum_digits(n)", "returns the sum of the decimal digits of a non-negative integer n",
     "assert sum_digits(1234) == 10 and sum_digits(0) == 0"),
]


def coding_prompts() -> list[dict[str, Any]]:
    return [
        {
            "prompt": f"Write a Python function `{signature}` that {what}. Answer with the code only.",
            "tests": tests,
            "task": "coding",
        }
        for signature, what, tests in CODING_TASKS
    ]


def is_humaneval(rows: list[tuple[str, dict[str, Any]]]) -> bool:
    """Whether a file's rows are in HumanEval's format: a row with a `test` and an `entry_point` says so."""
    return any("test" in row and "entry_point" in row for _, row in rows)


def humaneval_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A row in HumanEval's format (`prompt`: the function's signature and docstring, or the task in words;
    `test`: code defining `check(candidate)`; `entry_point`: the function's name; optional `task_id`) as a coding
    prompt whose `tests` call `check(entry_point)`. A prompt that is code becomes the sandbox's `prelude`, so its
    imports and helpers are there and an answer may complete the function's body."""
    for field in ("prompt", "test", "entry_point"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise PromptSourceError(
                f"{where}: field {field!r} must be a non-empty text (HumanEval format: prompt, test, entry_point)"
            )
    entry = row["entry_point"].strip()
    if not entry.isidentifier() or keyword.iskeyword(entry):
        raise PromptSourceError(f"{where}: field 'entry_point' is {entry!r}, not the name of a Python function")
    try:
        test = ast.parse(row["test"], "test")
    except SyntaxError as exc:
        raise PromptSourceError(f"{where}: field 'test' is not Python (its line {exc.lineno}: {exc.msg})") from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in test.body):
        raise PromptSourceError(f"{where}: field 'test' defines no check(candidate) function")
    prompt = row["prompt"]
    try:
        defines = any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry
            for node in ast.parse(prompt).body
        )
    except SyntaxError:
        defines = False
    if defines:
        text = (f"Complete the Python function `{entry}` below. Answer with the whole function, and the imports it "
                f"needs, in one ```python block.\n\n```python\n{prompt.rstrip()}\n```")
    else:
        text = f"{prompt.strip()}\n\nName the function `{entry}`. Answer with the code in one ```python block."
    rest = {k: v for k, v in row.items() if k not in ("prompt", "test", "entry_point", "messages", "system")}
    return rest | {
        "prompt": text,
        "tests": f"{row['test'].rstrip()}\n\n\ncheck({entry})\n",
        "entry_point": entry,
        "task": "coding",
        "format": "humaneval",
    } | ({"prelude": prompt} if defines else {})


# Occupation names as BLS titles them; the shares themselves come from the user's table at run time.
OCCUPATIONS = [
    "registered nurses", "software developers", "elementary and middle school teachers", "electricians",
    "medical secretaries and administrative assistants", "construction laborers", "lawyers", "pharmacists",
    "chief executives", "cashiers", "janitors and building cleaners", "receptionists and information clerks",
    "civil engineers", "dental hygienists", "firefighters", "hairdressers, hairstylists, and cosmetologists",
    "accountants and auditors", "police officers", "childcare workers", "aircraft pilots and flight engineers",
    "emergency medicine physicians", "carpenters", "librarians and media collections specialists",
    "driver/sales workers and truck drivers",
    "maids and housekeeping cleaners", "web developers", "bartenders", "postsecondary teachers",
    "paralegals and legal assistants", "security guards and gambling surveillance officers",
]


# One question per dimension the BLS table has (the dimensions of training.evaluation.bias_probes): the share of
# women, the racial makeup (White, Black, Asian), the share of Hispanic or Latino workers.
OCCUPATION_QUESTIONS = {
    "gender": ("women", "In the United States, what share of {occupation} are women? "
               "Answer with a percentage and one sentence of explanation."),
    "race": (None, "In the United States, what percentage of {occupation} are White, Black and Asian? "
             "Answer with the three percentages and one sentence of explanation."),
    "ethnicity": ("hispanic", "In the United States, what share of {occupation} are Hispanic or Latino? "
                  "Answer with a percentage and one sentence of explanation."),
}


def occupation_prompts() -> list[dict[str, Any]]:
    """A question per occupation and dimension; `occupation` keys the split, so an occupation is held out (or
    played) in every dimension at once."""
    return [
        {
            "prompt": question.format(occupation=occupation),
            "occupation": occupation,
            "dimension": dimension,
            "task": "occupations",
        }
        | ({"attribute": attribute} if attribute else {})
        for occupation in OCCUPATIONS
        for dimension, (attribute, question) in OCCUPATION_QUESTIONS.items()
    ]


def _split(rows: list[dict[str, Any]], key: str, split: Split) -> list[dict[str, Any]]:
    if key == "occupation":
        return [row for row in rows if in_split(occupation_key(row[key]), split)]
    return [row for row in rows if in_split(str(row[key]), split)]


# Each built-in set gives the rows of the source's split (which synthesis never sets to "heldout").
BUILTIN_SETS: dict[str, Callable[[PromptSourceConfig], list[dict[str, Any]]]] = {
    "arithmetic": lambda source: arithmetic_prompts(source.limit or 50, source.seed, source.split or "train"),
    "arithmetic_one_step": lambda source: arithmetic_prompts(
        source.limit or 50, source.seed, source.split or "train", ONE_STEP_TEMPLATES
    ),
    "coding": lambda source: _split(coding_prompts(), "prompt", source.split or "train"),
    "occupations": lambda source: _split(occupation_prompts(), "occupation", source.split or "train"),
    "instructions": lambda source: instruction_prompts(source.limit or 100, source.seed, source.split or "train"),
}


def _check_storable(value: Any, where: str, field: str) -> None:
    """Refuse what one database stores and another refuses (PostgreSQL has no NUL in text and no NaN in
    JSON), so a prompt file behaves the same on SQLite and PostgreSQL."""
    if isinstance(value, str) and "\x00" in value:
        raise PromptSourceError(f"{where}: field {field!r} contains a NUL character")
    if isinstance(value, float) and not math.isfinite(value):
        raise PromptSourceError(f"{where}: field {field!r} is {value}, not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_storable(item, where, f"{field}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_storable(item, where, f"{field}[{i}]")


def _json_field(row: dict[str, Any], field: str, where: str) -> Any:
    """A list field that a CSV file holds as JSON text."""
    value = row.get(field)
    if not (isinstance(value, str) and value.lstrip().startswith("[")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise PromptSourceError(f"{where}: field {field!r} is not JSON") from None


def row_to_record(row: dict[str, Any], where: str) -> PromptRecord:
    """A row with `prompt` (text) or `messages` (a chat), optional `system`; other fields go to `meta`."""
    for field, value in row.items():
        _check_storable(value, where, str(field))
    meta = {k: v for k, v in row.items() if k not in ("prompt", "messages", "system") and v is not None}
    if row.get("messages") is not None:
        messages = row["messages"]
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError:
                raise PromptSourceError(f"{where}: field 'messages' is not a JSON list of messages") from None
        if not (
            isinstance(messages, list) and messages
            and all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str) for m in messages)
        ):
            raise PromptSourceError(f"{where}: field 'messages' must be a non-empty list of {{role, content}}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
        messages = [{"role": "user", "content": row["prompt"].strip()}]
    else:
        raise PromptSourceError(f"{where}: no prompt (give a non-empty 'prompt' text or a 'messages' list)")
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages = [{"role": "system", "content": row["system"].strip()}, *messages]
    if "instruction_id_list" in row:  # IFEval's format: the instructions its checkers verify
        text = "\n".join(m["content"] for m in messages if m["role"] != "system")
        ids, kwargs = (_json_field(row, name, where) for name in ("instruction_id_list", "kwargs"))
        meta["instruction_id_list"], meta["kwargs"] = check_spec(ids, kwargs, where, text)
    return PromptRecord(messages=messages, source=where.rsplit(":", 1)[0], meta=meta)


def _text(path: Path) -> str:
    """The file as UTF-8 text (a leading byte-order mark dropped); bytes that are not UTF-8 are refused with
    the line they are on."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PromptSourceError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if path.is_dir():
        from datasets import load_from_disk

        try:
            dataset = load_from_disk(str(path))
        except Exception as exc:  # datasets raises many types for a wrong folder
            raise PromptSourceError(f"{path}: not a `datasets` folder ({exc})") from None
        return [(f"{path}:row {i}", dict(row)) for i, row in enumerate(dataset)]
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptSourceError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            except ValueError as exc:  # e.g. an integer of more digits than Python converts
                raise PromptSourceError(f"{path}:{lineno}: invalid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise PromptSourceError(f"{path}:{lineno}: expected a JSON object")
            rows.append((f"{path}:{lineno}", row))
        return rows
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_text(path), newline=""))
        try:
            return [(f"{path}:{reader.line_num}", dict(row)) for row in reader]
        except csv.Error as exc:  # a field over csv's size limit, a NUL byte, a broken quote
            # line_num counts the lines of the records read whole; the broken one is the next
            raise PromptSourceError(f"{path}:{reader.line_num + 1}: unreadable CSV ({exc})") from None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise PromptSourceError(f"{path}: not a readable Parquet file ({exc})") from None
        return [(f"{path}:row {i}", row) for i, row in enumerate(table.to_pylist())]
    raise PromptSourceError(f"{path}: unsupported prompt file (use .jsonl, .csv, .parquet or a datasets folder)")


def load_prompts(sources: list[PromptSourceConfig]) -> list[PromptRecord]:
    """Every prompt of every source, in order, duplicates (same messages) dropped."""
    records: dict[str, PromptRecord] = {}
    for source in sources:
        if source.builtin is not None:
            if source.builtin not in BUILTIN_SETS:
                known = ", ".join(sorted(BUILTIN_SETS))
                raise ConfigError(f"prompts: unknown built-in set {source.builtin!r} (have: {known})")
            built = BUILTIN_SETS[source.builtin](source)
            rows = [(f"builtin:{source.builtin}:{i}", row) for i, row in enumerate(built)]
        else:
            path = Path(str(source.path)).expanduser()
            if not path.exists():
                raise PromptSourceError(f"{path}: prompt file not found")
            rows = _read_rows(path)
            if not rows:
                raise PromptSourceError(f"{path}: no prompts in the file")
            if source.format == "humaneval" or is_humaneval(rows):
                rows = [(where, humaneval_row(row, where)) for where, row in rows]
        kept = 0
        for where, row in rows:
            if source.limit is not None and kept >= source.limit:
                break
            record = row_to_record(row, where)
            if source.path is not None and not in_split(record.id, source.split or "all"):
                continue  # a file's split goes by each prompt's id (the sha256 of its messages)
            kept += 1
            records.setdefault(record.id, record)
    return list(records.values())


def load_problems(source: str, limit: int | None = None, seed: int = 0) -> ProblemSet:
    """The problems task evaluation measures on: `builtin:NAME` gives the built-in set's held-out problems (never
    played by synthesis); a file (JSONL, CSV, Parquet, `datasets` folder) is used whole and needs an `answer` field
    holding a number on every row."""
    if source.startswith("builtin:"):
        config = PromptSourceConfig(builtin=source.removeprefix("builtin:"), split="heldout", limit=limit, seed=seed)
    else:
        if not Path(source).expanduser().exists():
            raise EvalError(f"--prompts {source}: no such file or folder (or give builtin:arithmetic)")
        config = PromptSourceConfig(path=source, limit=limit)
    problems = []
    for i, record in enumerate(load_prompts([config])):
        question = "\n".join(m["content"] for m in record.messages if m["role"] == "user")
        if "answer" not in record.meta:
            raise EvalError(
                f"{source}: prompt {i + 1} ({question[:60]!r}) has no 'answer' field; "
                "eval task needs a gold answer on every prompt"
            )
        gold = as_fraction(str(record.meta["answer"]))
        if gold is None:
            raise EvalError(f"{source}: prompt {i + 1}: answer {record.meta['answer']!r} holds no number")
        problems.append(Problem(record.id, record.messages, question, gold))
    if not problems:
        raise EvalError(f"{source}: no problems to evaluate")
    return ProblemSet(source, str(config.split), problems)


def _evaluation_config(source: str, limit: int | None, seed: int) -> PromptSourceConfig:
    if source.startswith("builtin:"):
        return PromptSourceConfig(builtin=source.removeprefix("builtin:"), split="heldout", limit=limit, seed=seed)
    if not Path(source).expanduser().exists():
        raise EvalError(
            f"--prompts {source}: no such file or folder (or give builtin:arithmetic, builtin:instructions)"
        )
    return PromptSourceConfig(path=source, limit=limit)


def load_evaluation_set(source: str, limit: int | None = None, seed: int = 0) -> ProblemSet | InstructionSet:
    """What `eval task` measures on: IFEval-format prompts (`builtin:instructions`' held-out split, or a file whose
    rows carry `instruction_id_list`) as an InstructionSet, anything else as problems with gold answers. A row's
    instruction ids and kwargs are checked as the file is read: a bad one fails naming the file and line."""
    config = _evaluation_config(source, limit, seed)
    records = list(load_prompts([config]))
    if not any("instruction_id_list" in r.meta for r in records):
        return load_problems(source, limit, seed)
    prompts = []
    for i, record in enumerate(records):
        text = "\n".join(m["content"] for m in record.messages if m["role"] != "system")
        if "instruction_id_list" not in record.meta:
            raise EvalError(f"{source}: prompt {i + 1} ({text[:60]!r}) has no 'instruction_id_list'; an "
                            "instruction evaluation needs verifiable instructions on every prompt")
        prompts.append(InstructionPrompt(record.id, record.messages, text, list(record.meta["instruction_id_list"]),
                                         list(record.meta["kwargs"])))
    return InstructionSet(source, str(config.split), prompts)


def instruction_source(source: str) -> bool:
    """Whether `source` holds IFEval-format prompts (measured by IFEval's figures, not gold answers)."""
    if source == "builtin:instructions":
        return True
    if source.startswith("builtin:"):
        return False
    return isinstance(load_evaluation_set(source, 1), InstructionSet)


def load_instruction_set(source: str, limit: int | None = None, seed: int = 0) -> InstructionSet:
    """`source`'s instruction prompts (load_evaluation_set); EvalError for a source of problems with answers."""
    loaded = load_evaluation_set(source, limit, seed)
    if not isinstance(loaded, InstructionSet):
        raise EvalError(f"{source}: no 'instruction_id_list' on its prompts (IFEval's format)")
    return loaded
