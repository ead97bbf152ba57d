"""Builds what an episode needs from a `SynthesisConfig`: one backend per configured model (shared by every
role that names it), the judge's tools, the four players, the run's prompt book and game settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agents.backends import Backend, BackendFactory, create_backend
from agents.players import Judge, PromptOptimizer, RewardModel, Target, default_prompt
from configs.schema import SynthesisConfig
from pipelines.episode import GameSettings, Players, PromptBook
from tools.base import JudgeTool
from tools.registry import build_tools


def game_settings(config: SynthesisConfig) -> GameSettings:
    return GameSettings(
        candidates=config.game.candidates,
        max_rounds=config.game.max_rounds,
        accept_threshold=config.game.accept_threshold,
        seed=config.sampling.seed,
        verdicts_decide=config.game.verdicts_decide,
        max_candidates=config.game.max_candidates,
        step_candidates=config.game.step_candidates,
        step_threshold=config.game.step_threshold,
        retire_after=config.game.retire_after,
        pooled_prior=config.game.pooled_prior,
        prior_strength=None if config.game.prior_strength == "auto" else config.game.prior_strength,
        round_threshold=config.game.round_threshold,
        step_rule=config.game.step_rule,
    )


def used_model_keys(config: SynthesisConfig) -> list[str]:
    """The keys under `models` that some role names, each once, in role order."""
    return list(dict.fromkeys(config.roles.model_dump().values()))


def model_ids(config: SynthesisConfig) -> dict[str, str]:
    """The model each role plays with, by name: what stored rounds and pairs record."""
    return {role: config.models[key].name for role, key in config.roles.model_dump().items()}


def open_backends(config: SynthesisConfig, factory: BackendFactory = create_backend) -> dict[str, Backend]:
    """One backend per model key that some role uses."""
    return {key: factory(config.models[key]) for key in used_model_keys(config)}


def build_players(
    config: SynthesisConfig,
    backends: Mapping[str, Backend],
    wrap_tool: Callable[[JudgeTool], JudgeTool] | None = None,
    tools: Mapping[str, JudgeTool] | None = None,
) -> Players:
    """The four players on `backends` (by model key); `wrap_tool` wraps each of the judge's tools (the Ray
    orchestration runs them as tasks on CPU workers). `tools` are the judge's tools if already built."""
    roles, models, retries = config.roles, config.models, config.game.parse_retries
    tools = build_tools(config.tools) if tools is None else dict(tools)
    if wrap_tool is not None:
        tools = {name: wrap_tool(tool) for name, tool in tools.items()}
    return Players(
        target=Target(
            backends[roles.target], models[roles.target].name, config.sampling,
            stop_at_final_answer=config.game.stop_at_final_answer,
            # a false step fails a candidate only where the calculator checks steps
            abandon_false_steps=config.game.abandon_false_steps and "calculator" in tools,
        ),
        judge=Judge(
            backends[roles.judge], models[roles.judge].name, tools,
            select_with_model=config.tools.selection == "model", parse_retries=retries,
            verdicts_decide=config.game.verdicts_decide,
        ),
        reward=RewardModel(backends[roles.reward], models[roles.reward].name, parse_retries=retries),
        optimizer=PromptOptimizer(backends[roles.optimizer], models[roles.optimizer].name, parse_retries=retries),
    )


def new_prompt_book() -> PromptBook:
    return PromptBook(default_prompt("target"), default_prompt("judge"))
