"""`prefsmith eval task|bias`: a model's skill on held-out problems, and its occupational bias against BLS data.

Torch and TRL are imported inside the commands, not at CLI start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from pipelines.cli.options import TableOption
from pipelines.cli.terminal import StageProgress, console

eval_app = typer.Typer(
    help="Evaluate models: task skills on held-out problems, occupational bias against BLS data.", no_args_is_help=True
)


@eval_app.command("bias")
def eval_bias(
    model: Annotated[str, typer.Option("--model", help="Model name, HF id or path.")],
    labor_table: TableOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json, report.md and plots.")],
    in_context: Annotated[
        int, typer.Option("--in-context", help="Also measure with K BLS facts in context.")
    ] = 0,
    after: Annotated[
        str | None,
        typer.Option("--after", help="A debiased model to measure beside (e.g. train debias --out)."),
    ] = None,
    min_employed: Annotated[
        int, typer.Option(help="Probe occupations with ≥ this many thousand employed.")
    ] = 100,
    held_out_fraction: Annotated[
        float, typer.Option(help="Share of occupations held out (--split-rule seeded).")
    ] = 0.3,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/held-out split (--split-rule seeded).")] = 0,
    split_rule: Annotated[
        str,
        typer.Option(
            help="prefsmith: the occupations synthesis and `train debias` hold out (one in five by a hash of the "
            "title); seeded: a seeded shuffle (--held-out-fraction, --split-seed)."
        ),
    ] = "prefsmith",
    limit: Annotated[int | None, typer.Option(help="Measure at most this many held-out occupations.")] = None,
    sampled: Annotated[int, typer.Option(help="Also sample N completions per occupation (gender).")] = 0,
    reverse: Annotated[int, typer.Option(help="Also sample N 'The {group} works as a' completions.")] = 0,
) -> None:
    """Bias score (with CI), amplification, KS and perplexity on held-out occupations; JSON, Markdown, PNG."""
    from training.evaluation.bias_report import run_bias_report, summary_table

    report = run_bias_report(
        model,
        labor_table,
        out,
        in_context_k=in_context,
        after_model=after,
        min_employed=min_employed,
        held_out_fraction=held_out_fraction,
        split_seed=split_seed,
        split_rule=split_rule,
        limit=limit,
        sampled_n=sampled,
        reverse_n=reverse,
    )
    console.print(summary_table(report.conditions), markup=False)
    console.print(f"report: {Path(out) / 'report.md'}", markup=False)


@eval_app.command("task")
def eval_task(
    model: Annotated[
        str, typer.Option("--model", help="A prefsmith model name, a registered checkpoint, a folder or an HF id.")
    ] = "smollm2-135m-instruct",
    prompts: Annotated[
        str,
        typer.Option(
            "--prompts", "--source",
            help="builtin:arithmetic or builtin:instructions (their held-out splits), a file with an 'answer' "
            "column, or an IFEval-format JSONL file (instruction_id_list, kwargs).",
        ),
    ] = "builtin:arithmetic",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Sampled answers a problem.")] = 4,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate at most N problems.")] = 50,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.8,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, help="Default: 64 (arithmetic), 512 (instructions).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    backend: Annotated[
        str,
        typer.Option(
            "--backend", help="Instruction prompts: auto (vLLM where installed), vllm or transformers."
        ),
    ] = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder (default under $PREFSMITH_HOME/evals).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing report folder.")] = False,
) -> None:
    """Evaluate a model on held-out problems with gold answers: sampled and greedy accuracy, answer ranking
    against near misses, each with a 95% interval; on instruction prompts, IFEval's four figures (prompt- and
    instruction-level, strict and loose) and a table per instruction type. Writes report.json and report.md."""
    from pipelines.prompt_sources import load_evaluation_set
    from storage.evaluations import INSTRUCTION_MEASURES, TASK_MEASURES
    from storage.folders import prefsmith_home
    from training.evaluation import instructions, task
    from training.evaluation.base import EvalError, EvalSettings
    from training.evaluation.generation import GenerationBackend, chosen_backend

    if backend not in ("auto", "vllm", "transformers"):
        raise EvalError(f"--backend {backend}: give auto, vllm or transformers")
    if out is not None and out.exists() and any(out.iterdir()) and not force:
        raise EvalError(f"{out} exists and is not empty (pass --force to replace it)")  # before minutes of work
    loaded = load_evaluation_set(prompts, limit, seed)  # a bad source fails before torch loads
    if out is None:
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{Path(model).name}-{prompts}-seed{seed}")
        out = prefsmith_home() / "evals" / slug
        force = True  # the default folder holds the latest evaluation of this model, source and seed
    if isinstance(loaded, instructions.InstructionSet):
        engine = cast(GenerationBackend, backend)
        chosen_backend(engine)  # an engine that is not installed fails before a model loads
        followed = instructions.evaluate_instructions(
            model, loaded, max_tokens=max_tokens or instructions.DEFAULT_MAX_TOKENS, seed=seed, backend=engine,
            progress=StageProgress(),
        )
        instructions.write_report(followed, out, replace=force)
        for row in followed.per_type:
            console.print(f"  {row.type:<45} n={row.n:<3} strict {row.strict:.3f}  loose {row.loose:.3f}", markup=False)
        measures, labels = followed.measures(), INSTRUCTION_MEASURES
        problems, split, seconds = followed.problems, followed.split, followed.seconds
    else:
        solved = task.evaluate_task(
            model,
            loaded,
            EvalSettings(samples=samples, temperature=temperature, max_tokens=max_tokens or 64, seed=seed),
            progress=StageProgress(),
        )
        task.write_report(solved, out, replace=force)
        measures, labels = solved.measures(), TASK_MEASURES
        problems, split, seconds = solved.problems, solved.split, solved.seconds
    for key, label in labels:
        m = measures[key]
        console.print(f"{label:<24} {m.value:.3f}  (95% interval {m.ci95[0]:.3f} – {m.ci95[1]:.3f})")
    console.print(f"{problems} {split} problems of {prompts}, {seconds:.0f} s → {out}")
