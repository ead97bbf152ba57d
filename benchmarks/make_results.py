"""`make bench`: runs the benchmarks and assembles benchmarks/RESULTS.md from one section per benchmark.

A benchmark's section, benchmarks/results/NAME.md, is written by `run`: the exact command, when, where and on
which commit it ran, and everything it printed. The discussion of those figures is written by hand beside it, in
benchmarks/results/NAME.notes.md: a first paragraph of at most three lines saying what the figures mean, then
anything longer (how it was measured, earlier hosts' runs), and the date of the figures it was written for.
RESULTS.md shows each benchmark as its command, its tables (the output without its machine-readable lines) and
that first paragraph, links the rest, and warns when the figures are newer than their discussion.

    python benchmarks/make_results.py run [NAME ...] [--labor-table CSV]   # rerun, rewrite sections, assemble
    python benchmarks/make_results.py assemble                            # RESULTS.md from the sections, runs nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
DEFAULT_LABOR_TABLE = "../shared/data/labor/cpsaat11_2022_clean.csv"
# Every benchmark runs with one torch/BLAS thread: on small shared machines more threads make timings erratic.
BENCH_ENV = {"OMP_NUM_THREADS": "1"}
# The first line of a section / notes file: machine-readable, invisible in rendered Markdown.
SECTION_TAG = re.compile(r"<!-- bench: name=(?P<name>\S+) date=(?P<date>\d{4}-\d{2}-\d{2})[^>]*-->")
NOTES_TAG = re.compile(r"<!-- notes for the figures of (?P<date>\d{4}-\d{2}-\d{2}) -->")
# vLLM writes its own log lines to stdout ("INFO 11-29 09:12:01 [file.py:12] ...", also prefixed by the
# engine-core process); they are not the benchmark's figures.
VLLM_LOG_LINE = r"^(\(\S+ pid=\d+\) )?(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d "
# Ray's own log lines ("2026-12-05 19:08:46,552	INFO worker.py:2038 -- Started a local Ray instance.").
RAY_LOG_LINE = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR) "
ENGINE_LOG_LINES = f"{VLLM_LOG_LINE}|{RAY_LOG_LINE}"
# Printed lines RESULTS.md leaves out of every section (the section file keeps them): JSON copies of the tables
# for scripts, and trainers' per-step logs, which are Python dicts.
MACHINE_LINE = re.compile(r"^\s*\{")
MEANING_LINES = 3  # the most lines the first paragraph of a notes file may take


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script, the arguments its recorded figures were measured with, and its title."""

    name: str
    title: str
    args: tuple[str, ...] = ()
    drop: str | None = None  # regex of stdout lines that are not part of the figures
    unset: tuple[str, ...] = ()  # variables of BENCH_ENV this benchmark runs without
    hide: str | None = None  # regex of recorded lines (progress, per-run records) RESULTS.md leaves out
    module: str | None = None  # the script's file name in benchmarks/, where it is not NAME.py

    @property
    def env(self) -> dict[str, str]:
        return {k: v for k, v in BENCH_ENV.items() if k not in self.unset}

    @property
    def script(self) -> Path:
        return REPO / "benchmarks" / f"{self.module or self.name}.py"

    def command(self, labor_table: str) -> list[str]:
        """The command line, run from the repository root; `{labor_table}` in `args` is the BLS table."""
        args = [labor_table if a == "{labor_table}" else a for a in self.args]
        return [sys.executable, str(self.script.relative_to(REPO)), *args]


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("synthesis", "Synthesis on Ray: pipeline vs. raw engine, batching, orchestration overhead",
              ("--prompts", "16", "--episodes", "1000", "10000", "--episode-workers", "0", "2", "--backend", "vllm"),
              drop=ENGINE_LOG_LINES),
    Benchmark("backends", "Model backends: tokens/s and the speedup of batching",
              ("--prompts", "8", "--samples", "2", "--max-tokens", "32"), drop=VLLM_LOG_LINE),
    Benchmark("forward_cost", "Cost of a forward pass of the local model, by batch size"),
    Benchmark("tools_effect", "Do the judge's tools change the data?",
              ("--n", "50", "--candidates", "2", "--rounds", "1", "--max-tokens", "24", "--in-flight", "25")),
    Benchmark("verdicts_decide", "Verdicts decide: pairs per minute when tools spare the judge and reward model",
              ("--n", "16")),
    # --before names the last commit with the loose checks (the number after the last '=', no finish check).
    Benchmark("verdicts_clean", "Is a verified pair clean? Strict checks vs. the loose ones, pairs per minute",
              ("--n", "24", "--before", "f271b91")),
    # A whole synthesis as a user runs it: the engine takes its default threads (every CPU), the old code the
    # one thread its quickstart set.
    Benchmark(
        "pairs_per_min",
        "Pairs per minute end to end, before and after the throughput work",
        ("--n", "24"),
        unset=("OMP_NUM_THREADS",),
        hide=r': \{"seconds"',  # each configuration's record, which the table below them repeats
    ),
    Benchmark("quickstart_engines", "The quickstart end to end on the transformers and the vLLM CPU engine",
              drop=ENGINE_LOG_LINES),
    Benchmark("sparsepo_vs_dpo", "SparsePO vs. TRL DPO: step time and peak memory", ("--steps", "3")),
    # the recorded figures were measured on the seeded occupation split (before the split synthesis keeps to)
    Benchmark("debias_smollm2", "Occupational bias of SmolLM2-135M-Instruct before and after debiasing",
              ("--labor-table", "{labor_table}", "--set", "extra.split_rule=seeded")),
    # --before names the last commit with the previous (rlimits + audit hook) sandbox, not HEAD: a rerun
    # after later commits must still compare against that sandbox.
    Benchmark("sandbox", "Judge sandbox: per-call overhead, previous vs. kernel-enforced",
              ("--before", "9a0f1d7")),
    Benchmark("humaneval_sandbox", "Judge sandbox on HumanEval: 164 canonical solutions and 328 wrong candidates",
              ("--workers", "1", "8")),
    Benchmark("ui_latency", "prefsmith ui: page latency with 10,000 and 1,000,000 pairs in PostgreSQL",
              ("--pairs", "10000", "1000000")),
    Benchmark("debias_loop", "Debiasing from the loop: synthesized occupation pairs, held-out bias vs. baseline",
              ("--labor-table", "{labor_table}", "--prompts", "36"), hide=r"^\[\d/\d\] |^total "),
    Benchmark("iterate_loop", "prefsmith iterate: does training on our pairs make the model better (held-out)?",
              ("--prompts", "128", "--candidates", "8", "--rounds", "2", "--eval-limit", "50", "--eval-samples", "4"),
              hide=r"^round \d+ \w+: done$|^run \S+: |^total "),
    Benchmark("iterate_instructions", "prefsmith iterate on instructions: IFEval's figures per round (held-out)",
              ("--rounds", "2", "--prompts", "32", "--eval-limit", "30", "--eval-max-tokens", "256"),
              hide=r"^round \d+ \w+: done$|^run \S+: |^total "),
    Benchmark("yield", "Yield: verified pairs per 1,000 target tokens, sampling by yield or not, a distilabel peer",
              ("--n", "24", "--one-step", "24", "--instructions", "16", "--peer-on", "arithmetic",
               "--peer-on", "arithmetic_one_step"), hide=r': \{"seconds"', module="yield_bench"),
)  # fmt: skip


def shown_command(command: list[str], bench: Benchmark) -> str:
    """The command as a user types it from the repository root (the interpreter as .venv/bin/python)."""
    python = Path(sys.executable)
    shown = [".venv/bin/python" if python == (REPO / ".venv/bin/python") else python.name, *command[1:]]
    env = [*(f"-u {k}" for k in bench.unset), *(f"{k}={v}" for k, v in bench.env.items())]
    prefix = ("env " if bench.unset else "") + " ".join(env)
    return f"{prefix} {shlex.join(shown)}".strip()


def machine() -> str:
    """Architecture, CPU model and count, memory and GPUs of this machine, in one line."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if models:
            cpu = f"{cpu} {models[0].strip()}"
    parts = [f"{cpu}, {os.cpu_count()} CPUs"]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), re.MULTILINE)
        if total:
            parts.append(f"{int(total.group(1)) / 2**20:.0f} GiB memory")
    gpus = ""
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        gpus = "; ".join(line.split(" (UUID")[0] for line in listed.stdout.splitlines() if line.strip())
    parts.append(gpus or "no GPU")
    return ", ".join(parts)


def commit() -> str:
    """The checked-out commit, and whether the working tree differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{head} with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else head


TABLE_DELIMITER = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def render_output(lines: list[str]) -> str:
    """Printed output as Markdown: Markdown tables (runs of lines starting with `|`) as they are, so a
    benchmark that prints one renders as one, and the rest fenced. Tables printed back to back are split."""
    blocks: list[list[str]] = []  # each block: lines of one table, or of one stretch of plain output
    for line in lines:
        is_table = line.startswith("|")
        current = blocks[-1] if blocks else None
        if current is None or current[0].startswith("|") != is_table:
            blocks.append([line])
        elif is_table and TABLE_DELIMITER.match(line) and len(current) > 2:
            blocks.append([current.pop(), line])  # a new table begins at the header above this delimiter
        else:
            current.append(line)
    rendered = []
    for block in blocks:
        text = "\n".join(block).strip("\n")
        if text:
            rendered.append(text if block[0].startswith("|") else f"```\n{text}\n```")
    return "\n\n".join(rendered)


def run_one(bench: Benchmark, labor_table: str) -> bool:
    """Run one benchmark, echoing its output; on success rewrite its section. False when it failed."""
    command = bench.command(labor_table)
    print(f"\n=== {bench.name}: {shown_command(command, bench)}", flush=True)
    drop = re.compile(bench.drop) if bench.drop else None
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    kept: list[str] = []
    # stdout holds the figures; stderr (progress, engine logs) goes straight to the terminal. Unbuffered, so
    # a long benchmark's lines are echoed as they are printed.
    env = {k: v for k, v in os.environ.items() if k not in bench.unset} | bench.env | {"PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            if drop is None or not drop.match(line):
                kept.append(line.rstrip("\n"))
    seconds = time.perf_counter() - started
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    if process.returncode != 0:
        print(f"=== {bench.name}: failed (exit {process.returncode}); its section is left as it was", flush=True)
        return False
    section = "\n".join(
        [
            f"<!-- bench: name={bench.name} date={started_at:%Y-%m-%d} -->",
            f"Measured {started_at:%Y-%m-%d %H:%M} UTC on {machine()}; commit {commit()}; "
            f"{took}. Generated by `make bench`.",
            "",
            "```bash",
            shown_command(command, bench),
            "```",
            "",
            render_output(kept),
            "",
        ]
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{bench.name}.md").write_text(section, encoding="utf-8")
    return True


HEADER = """\
# prefsmith benchmark results

Every figure below comes from a command in this repository that anyone can rerun. Each section gives the command
(when, where and on which commit it ran), the tables it printed and, in three lines, what they mean; its full
output is in `results/NAME.md`, its discussion and the runs on earlier hosts in `results/NAME.notes.md`.
Generated by `benchmarks/make_results.py`, not by hand: `make bench` reruns every benchmark (hours on a CPU),
`make bench BENCH="forward_cost backends"` those named, and `python benchmarks/make_results.py assemble` rewrites
this file from the recorded sections without running anything.

How to read them: the benchmarks print ratios measured side by side in one run (pipeline vs. raw engine,
SparsePO vs. DPO, batched vs. one at a time), because absolute timings on small shared machines move by up
to ~20 % between runs. Unless a section says otherwise, nothing here was measured on a GPU or on a model
larger than SmolLM2-135M-Instruct.
"""


@dataclass(frozen=True)
class Section:
    """A recorded section, benchmarks/results/NAME.md, read back: where it ran, its command, what it printed."""

    date: str | None
    provenance: str  # when, where and on which commit it ran
    command: str
    output: list[str]  # the printed lines, as `run` recorded them (fences removed)


COMMAND_BLOCK = re.compile(r"^```bash\n(?P<command>.*?)\n```\n", re.MULTILINE | re.DOTALL)


def read_section(path: Path) -> Section:
    text = path.read_text(encoding="utf-8")
    found = COMMAND_BLOCK.search(text)
    if found is None:
        raise SystemExit(f"{path.relative_to(REPO)}: no ```bash block with the command that made its figures")
    provenance = SECTION_TAG.sub("", text[: found.start()]).strip()
    output = [line for line in text[found.end() :].strip("\n").splitlines() if not line.startswith("```")]
    return Section(section_date(text), provenance, found.group("command").strip(), output)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def json_tables(document: dict[str, Any], prefix: str = "") -> list[str]:
    """A JSON object of results as Markdown tables: entries whose values are flat objects with the same keys share
    a table, one row each; plain values share a two-column table; nested objects follow, their names prefixed."""
    rows: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
    plain: list[tuple[str, Any]] = []
    nested: list[tuple[str, dict[str, Any]]] = []
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            nested.append((name, value))
        elif isinstance(value, dict):
            rows.setdefault(tuple(value), []).append((name, value))
        else:
            plain.append((name, value))
    tables = []
    for columns, members in rows.items():
        lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_cell(row[c]) for c in columns) + " |" for name, row in members]
        tables.append("\n".join(lines))
    if plain:
        tables.append("\n".join(["| | value |", "|---|---|", *(f"| {n} | {_cell(v)} |" for n, v in plain)]))
    for name, value in nested:
        tables += json_tables(value, f"{name}.")
    return tables


def shown_output(bench: Benchmark, output: list[str]) -> str:
    """What RESULTS.md shows of a section's output: its tables and verdict lines, without the machine-readable
    lines and those `bench.hide` names; an output that is one JSON object is shown as tables of it."""
    try:
        document = json.loads("\n".join(output))
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        return "\n\n".join(json_tables(document))
    hide = re.compile(bench.hide) if bench.hide else None
    kept = [line for line in output if not MACHINE_LINE.match(line) and not (hide and hide.search(line))]
    return render_output(kept)


def notes_meaning(path: Path) -> tuple[str | None, str, bool]:
    """(the date the notes were written for, their first paragraph, whether more follows) of a notes file."""
    text = path.read_text(encoding="utf-8")
    found = NOTES_TAG.search(text)
    paragraphs = NOTES_TAG.sub("", text).strip().split("\n\n", 1)
    meaning = paragraphs[0].strip()
    if len(meaning.splitlines()) > MEANING_LINES:
        raise SystemExit(
            f"{path.relative_to(REPO)}: the first paragraph says what the figures mean in at most {MEANING_LINES} "
            f"lines; it has {len(meaning.splitlines())} (move the rest below a blank line)"
        )
    return (found.group("date") if found else None), meaning, len(paragraphs) > 1


def section_date(text: str) -> str | None:
    found = SECTION_TAG.search(text)
    return found.group("date") if found else None


def date_of(bench: Benchmark) -> str | None:
    section_file = RESULTS_DIR / f"{bench.name}.md"
    return section_date(section_file.read_text(encoding="utf-8")) if section_file.is_file() else None


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def render_section(bench: Benchmark) -> list[str]:
    """One benchmark in RESULTS.md: its command, its tables, what they mean, and links to the rest."""
    section_file = RESULTS_DIR / f"{bench.name}.md"
    notes_file = RESULTS_DIR / f"{bench.name}.notes.md"
    parts = [f"## {bench.title}", ""]
    if not section_file.is_file():
        placeholder = shown_command(bench.command(DEFAULT_LABOR_TABLE), bench)
        state = "" if bench.script.is_file() else f" (`{bench.script.relative_to(REPO)}` does not exist yet)"
        return [*parts, f"Not measured yet{state}. Command:", "", "```bash", placeholder, "```", ""]
    section = read_section(section_file)
    parts += [section.provenance, "", "```bash", section.command, "```", "", shown_output(bench, section.output), ""]
    links = [f"Full output: [`results/{section_file.name}`](results/{section_file.name})"]
    if notes_file.is_file():
        notes_date, meaning, more = notes_meaning(notes_file)
        if section.date and notes_date and notes_date != section.date:
            parts += [
                f"> The figures above are from {section.date}; the notes below were written for those of "
                f"{notes_date}. Check them against the figures before relying on them.",
                "",
            ]
        parts += [meaning, ""]
        if more:
            links.append(f"discussion and earlier runs: [`results/{notes_file.name}`](results/{notes_file.name})")
    else:
        parts += [f"> No notes yet: `results/{notes_file.name}` should say what these figures mean.", ""]
    return [*parts, "; ".join(links) + ".", ""]


def assemble() -> Path:
    """Write RESULTS.md from the header and each benchmark's section and notes, in the registry's order."""
    contents = ["- [{}](#{}) ({})".format(b.title, anchor(b.title), date_of(b) or "not measured yet")
                for b in BENCHMARKS]  # fmt: skip
    parts = [HEADER, "## Contents", "\n".join(contents), ""]
    for bench in BENCHMARKS:
        parts += render_section(bench)
    RESULTS_MD.write_text("\n".join(parts).rstrip("\n") + "\n", encoding="utf-8")
    return RESULTS_MD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run benchmarks (all, or those named), rewrite their sections, assemble")
    run.add_argument("names", nargs="*", metavar="NAME", help=", ".join(b.name for b in BENCHMARKS))
    run.add_argument("--labor-table", default=DEFAULT_LABOR_TABLE, help="CPS table 11 for debias_smollm2")
    sub.add_parser("assemble", help="write RESULTS.md from the sections as they are")
    args = parser.parse_args()

    failed: list[str] = []
    if args.action == "run":
        known = {b.name: b for b in BENCHMARKS}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            parser.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(known)})")
        for bench in [known[n] for n in args.names] or list(BENCHMARKS):
            if not bench.script.is_file():
                print(f"=== {bench.name}: {bench.script.relative_to(REPO)} does not exist; skipped", flush=True)
                continue
            if not run_one(bench, args.labor_table):
                failed.append(bench.name)
    print(f"wrote {assemble().relative_to(REPO)}", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (their sections keep the previous figures)")


if __name__ == "__main__":
    main()
