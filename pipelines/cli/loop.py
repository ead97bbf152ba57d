"""`prefsmith iterate`: the outer loop of synthesize → export → train → evaluate.

Each round's trained policy is the next round's target; a rerun continues after the last finished stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.options import AddressOption, ConfigOption, DbOption, SetOption
from pipelines.cli.terminal import EpisodeProgress, StageProgress, say

if TYPE_CHECKING:
    from configs.schema import SynthesisConfig


def iterate_command(
    config: ConfigOption = "quickstart",
    set_: SetOption = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds of synthesize → train → evaluate.")] = 2,
    name: Annotated[
        str | None, typer.Option("--name", help="Name of the loop; round r's run and checkpoint are NAME-rR.")
    ] = None,
    trainer: Annotated[
        str, typer.Option("--trainer", help="dpo, sparsepo, or debias (occupation prompts; needs --labor-table).")
    ] = "dpo",
    labor_table: Annotated[
        str | None,
        typer.Option("--labor-table", help="--trainer debias: the BLS table to ground on and measure bias against."),
    ] = None,
    train_config: Annotated[
        str | None, typer.Option("--train-config", help="Training config file or preset (default train_TRAINER).")
    ] = None,
    train_set: Annotated[
        list[str] | None, typer.Option("--train-set", help="Override a training config field (repeatable).")
    ] = None,
    eval_prompts: Annotated[
        str | None,
        typer.Option(
            "--eval-prompts",
            help="builtin:arithmetic or builtin:instructions (held-out splits), or a file with answers or IFEval's "
            "instructions (default: the config's evaluation.prompts, else builtin:arithmetic).",
        ),
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", min=1, help="Problems (debias: held-out occupations) evaluated.")
    ] = None,
    eval_samples: Annotated[int, typer.Option("--eval-samples", min=1)] = 4,
    eval_max_tokens: Annotated[
        int | None, typer.Option("--eval-max-tokens", min=1, help="Default 64 (arithmetic), 512 (instructions).")
    ] = None,
    eval_backend: Annotated[
        str | None, typer.Option("--eval-backend", help="Instruction prompts: auto, vllm or transformers.")
    ] = None,
    require_verified: Annotated[
        bool, typer.Option("--require-verified", help="Train only on pairs the tools verified correct over wrong.")
    ] = False,
    include_retired: Annotated[
        bool, typer.Option("--include-retired", help="Play prompts this loop's policies retired.")
    ] = False,
    db: DbOption = None,
    address: AddressOption = None,
) -> None:
    """The outer loop: each round synthesizes with the current policy as the target, exports, trains it, evaluates
    it on held-out problems, and makes it the next target. A rerun continues after the last finished stage."""
    from configs.loading import config_hash, load_config, resolve_config_path
    from configs.schema import TrainingConfig
    from pipelines.iterate import IterateError, IterateSettings, iterate, round_table
    from pipelines.prompt_sources import instruction_source
    from training.evaluation.base import EvalSettings

    synthesis: SynthesisConfig = load_config(config, set_ or [])
    evaluation = synthesis.evaluation
    prompts = eval_prompts or evaluation.prompts or "builtin:arithmetic"
    instructions = instruction_source(prompts)
    backend = eval_backend or evaluation.backend
    if backend not in ("auto", "vllm", "transformers"):
        raise IterateError(f"--eval-backend {backend}: give auto, vllm or transformers")
    train_source = train_config or f"train_{trainer}"
    settings = IterateSettings(
        name=name or f"iterate-{config_hash(synthesis)[:12]}",
        rounds=rounds,
        trainer=trainer,
        training=load_config(train_source, train_set or [], schema=TrainingConfig),
        training_source=str(resolve_config_path(train_source)),
        eval_prompts=prompts,
        eval_limit=eval_limit or evaluation.limit or 50,
        eval=EvalSettings(
            samples=eval_samples,
            max_tokens=eval_max_tokens or evaluation.max_tokens or (512 if instructions else 64),
            seed=synthesis.sampling.seed or 0,
        ),
        eval_backend=backend,
        require_verified=require_verified,
        training_overrides=tuple(train_set or []),
        labor_table=labor_table,
        include_retired=include_retired,
    )
    rows = iterate(synthesis, settings, db_url=db, address=address, log=say, progress=EpisodeProgress(),
                   eval_progress=StageProgress())
    for line in round_table(rows):
        say(line)
    from storage.folders import prefsmith_home

    say(f"table, plot and reports: {prefsmith_home() / 'iterations' / settings.name}")

