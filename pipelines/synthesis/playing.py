"""What both ways of playing a run share — threads of the driver (`local`) and episode-worker actors
(`workers`): the players on the run's engine actors, the episodes one process plays at once, and one base that
plays an episode to its end under the run's stop rules."""

from __future__ import annotations

import functools
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

from agents.game import EpisodePrompt
from configs.schema import SynthesisConfig
from pipelines.episode import Book, EpisodeRecord, GameSettings, PlayedRound, Players, play_episode
from pipelines.game_setup import build_players, game_settings
from pipelines.recording import RoundToStore
from pipelines.sampling import VerdictPool
from pipelines.synthesis.engines import ActorBackend, Engines
from pipelines.synthesis.ray_tools import wrap_tool
from pipelines.synthesis.run import Abandoned, PendingEpisode
from storage.records import PromptRecord
from storage.vocabulary import EpisodeStatus
from tools.base import JudgeTool


def episode_slots(config: SynthesisConfig) -> int:
    """How many episodes one process plays at once: all K (`ray.episodes_in_flight`) in the driver, an equal
    share of them in each of `ray.episode_workers` workers."""
    workers = config.ray.episode_workers
    return math.ceil(config.ray.episodes_in_flight / workers) if workers else config.ray.episodes_in_flight


def ray_players(
    config: SynthesisConfig,
    replicas: Mapping[str, Sequence[Engines]],
    tools: dict[str, JudgeTool],
    abandon: threading.Event,
) -> Players:
    """The players `config` names, calling each model's engine `replicas` and running the tools that are not
    cheap as Ray tasks; every call dropped once `abandon` is set."""
    backends = {
        key: ActorBackend(groups, config.models[key].max_batch_size, abandon=abandon)
        for key, groups in replicas.items()
    }
    wrap = functools.partial(wrap_tool, timeout_s=config.tools.call_timeout_s, abandon=abandon)
    return build_players(config, backends, wrap_tool=wrap, tools=tools)


class EpisodePlayer(ABC):
    """Plays a run's episodes, one call of `play` each, from many threads at once, under the rules both ways of
    playing share: once stopping, no new episode starts and each in-flight one ends after the round it is
    playing; once abandoned, a round that finishes is dropped (a rerun plays it again); and one broken episode
    ends as failed instead of stopping the run. What becomes of a finished round and of an ended episode is
    the subclass's: `keep` and `end`."""

    def __init__(
        self,
        config: SynthesisConfig,
        replicas: Mapping[str, Sequence[Engines]],
        tools: dict[str, JudgeTool],
        book: Book,
        abandon: threading.Event,
    ) -> None:
        self.abandon, self.book = abandon, book
        self.players = ray_players(config, replicas, tools, abandon)
        self.settings = game_settings(config)
        self.verdict_pool = VerdictPool()  # the verdicts of the episodes this process plays (`game.pooled_prior`)
        self._lock = threading.Lock()  # `keep` and `end` are called from every episode's thread

    @property
    @abstractmethod
    def stopping(self) -> bool:
        """True once no new episode may start and each in-flight one ends after its current round."""

    @abstractmethod
    def keep(self, played: RoundToStore) -> None:
        """A round that finished; raising `Abandoned` leaves its episode unfinished."""

    @abstractmethod
    def end(self, prompt_id: str, status: EpisodeStatus | None, failure: str | None = None) -> None:
        """The episode of `prompt_id` is over: its final `status`, None when it was left for a rerun; `failure`
        says why an episode `FAILED`."""

    def play(self, item: PendingEpisode, prompt: PromptRecord) -> None:
        """Play (or continue) `item`'s episode to its end, or until the run stops."""
        if self.stopping:
            self.end(item.prompt_id, None)
            return
        try:
            episode = self._continue(item, prompt)
        except Abandoned:
            self.end(item.prompt_id, None)
            return
        except Exception as exc:  # one broken episode must not stop the run
            if self.abandon.is_set():
                self.end(item.prompt_id, None)
            else:
                self.end(item.prompt_id, EpisodeStatus.FAILED, f"{type(exc).__name__}: {exc}")
            return
        self.end(item.prompt_id, episode.status)

    def _continue(self, item: PendingEpisode, prompt: PromptRecord) -> EpisodeRecord:
        return play_pending(item, prompt, self.players, self.book, self.settings, self._on_round, self.verdict_pool)

    def _on_round(self, episode: EpisodeRecord, record: PlayedRound) -> None:
        if self.abandon.is_set():
            raise Abandoned()  # a round finished after "stop now" may be cut short: a rerun plays it again
        self.keep(RoundToStore.of(episode, record))
        if self.stopping and not episode.finished:
            raise Abandoned()  # stopping: the kept round is where a rerun continues


def play_pending(
    item: PendingEpisode,
    prompt: PromptRecord,
    players: Players,
    book: Book,
    settings: GameSettings,
    on_round: Callable[[EpisodeRecord, PlayedRound], None],
    pool: VerdictPool | None = None,
) -> EpisodeRecord:
    """Play (or continue) `item`'s episode: from its next round, with the prompt versions it left off with and
    the verdict counts its stepped sampling continues from; its verdicts join `pool`."""
    resume = item.resume_versions
    prompts = None if resume is None else (book.get("target", resume["target"]), book.get("judge", resume["judge"]))
    return play_episode(
        EpisodePrompt(prompt.id, prompt.messages, prompt.meta),
        players,
        book,
        settings,
        first_round=item.rounds_played,
        prompts=prompts,
        on_round=on_round,
        prior=item.prior,
        own=item.own,
        pool=pool,
    )
