"""Builds what an episode needs from a `SynthesisConfig`: one backend per configured model (shared by every
role that names it), the judge's tools, the four players, the run's prompt book and game settings.
"""

from __future__ import annotations

from collections.abc import Callable

from agents.backends import Backend, create_backend
from agents.players import Judge, PromptOptimizer, RewardModel, Target, default_prompt
from configs.schema import ModelConfig, SynthesisConfig
from pipelines.episode import GameSettings, Players, PromptBook
from tools.registry import build_tools


def game_settings(config: SynthesisConfig) -> GameSettings:
    return GameSettings(
        candidates=config.game.candidates,
        max_rounds=config.game.max_rounds,
        accept_threshold=config.game.accept_threshold,
        seed=config.sampling.seed,
    )


def open_backends(
    config: SynthesisConfig, factory: Callable[[ModelConfig], Backend] = create_backend
) -> dict[str, Backend]:
    """One backend per model key that some role uses."""
    used = dict.fromkeys(config.roles.model_dump().values())
    return {key: factory(config.models[key]) for key in used}


def build_players(config: SynthesisConfig, backends: dict[str, Backend]) -> Players:
    roles, models, retries = config.roles, config.models, config.game.parse_retries
    return Players(
        target=Target(backends[roles.target], models[roles.target].name, config.sampling),
        judge=Judge(
            backends[roles.judge], models[roles.judge].name, build_tools(config.tools),
            select_with_model=config.tools.selection == "model", parse_retries=retries,
        ),
        reward=RewardModel(backends[roles.reward], models[roles.reward].name, parse_retries=retries),
        optimizer=PromptOptimizer(backends[roles.optimizer], models[roles.optimizer].name, parse_retries=retries),
    )


def new_prompt_book() -> PromptBook:
    return PromptBook(default_prompt("target"), default_prompt("judge"))
