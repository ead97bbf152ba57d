"""Real episodes with SmolLM2-135M-Instruct in every role (transformers backend, CPU), stored in SQLite and
PostgreSQL: every stored round is explained by its candidates, evidence, ranking, pair, reward and prompts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from agents.game import EpisodePrompt
from configs import load_config
from pipelines.episode import EpisodeRecord, play_episode
from pipelines.game_setup import build_players, game_settings, model_ids, new_prompt_book, open_backends
from pipelines.recording import store_episode
from storage.db import session_scope
from storage.migrate import open_database
from storage.models import Episode, Generation, Judgment, PreferencePair, PromptVersion, Round, ToolEvidence
from storage.records import PromptRecord, add_prompts, ensure_episodes, ensure_run
from storage.vocabulary import EPISODE_FINISHED, RoundOutcome

pytestmark = pytest.mark.model

EASY = [
    ("What is 2 + 3? End your reply with: The answer is N.", 5, "2 + 3"),
    ("What is 10 - 4? End your reply with: The answer is N.", 6, "10 - 4"),
]


@pytest.fixture(scope="module")
def played(small_model_path: Path) -> tuple[list[EpisodeRecord], dict[str, str], object]:
    config = load_config(
        "quickstart",
        # Every round reaches the judge and the reward model (verdicts not deciding): with the strict checks a
        # 16-token answer is often cut off, every candidate can fail, and a round decided on verdicts would be a tie.
        ["game.candidates=3", "game.max_rounds=2", "sampling.temperature=1.0", "sampling.max_tokens=16",
         "sampling.seed=3", "game.verdicts_decide=false"],
    )
    backends = open_backends(config)
    players = build_players(config, backends)
    book = new_prompt_book()
    prompts = [
        PromptRecord(messages=[{"role": "user", "content": q}], source="test",
                     meta={"answer": a, "expression": e, "answer_kind": "numeric"})
        for q, a, e in EASY
    ]
    # Episodes in flight together: the backend batches their requests into shared engine calls.
    with ThreadPoolExecutor(len(prompts)) as pool:
        episodes = list(pool.map(
            lambda p: play_episode(EpisodePrompt(p.id, p.messages, p.meta), players, book, game_settings(config)),
            prompts,
        ))
    for backend in backends.values():
        backend.close()
    return episodes, model_ids(config), {"prompts": prompts}


def test_episodes_play_and_explain_themselves(played) -> None:
    episodes, _, _ = played
    rounds = [r for e in episodes for r in e.rounds]
    assert all(e.status in EPISODE_FINISHED for e in episodes)
    assert any(r.reward is not None or r.accepted_by for r in rounds), "no round got as far as a decided pair"
    for r in rounds:
        if r.outcome == RoundOutcome.FAILED:
            assert r.failure_reason and r.failures
            continue
        assert len(r.candidates) == 3 and all(c.completion_tokens for c in r.candidates)
        assert r.tools == ["reference_answer", "calculator"]
        assert {(c.tool, c.candidate) for c in r.tool_calls} == {
            (t, i) for t in ("finished", "reference_answer", "calculator") for i in range(3)
        }
        for call in r.tool_calls:  # the finish check reads the backend's finish reason, and only that decides it
            if call.tool == "finished":
                assert call.evidence.verdict is (r.candidates[call.candidate].finish_reason == "stop")
        assert r.ranking is not None and len(r.ranking.scored) == 3
        if r.outcome == RoundOutcome.TIE:
            assert r.chosen_index is None and "tie" in r.failure_reason
        else:
            best, worst = r.ranking.best_and_worst()
            assert (r.chosen_index, r.rejected_index) == (best.index, worst.index)
            assert best.final_score > worst.final_score
            if r.accepted_by == "verified":  # the tools' checks decided: no reward model was asked
                assert (best.verified, worst.verified, r.reward, r.outcome) == (True, False, None, "accepted")
                assert r.candidates[best.index].finish_reason == "stop", "a verified answer finished"
            else:
                assert 1 <= r.reward.score <= 10 and r.reward_raw
                assert r.outcome == (RoundOutcome.ACCEPTED if r.reward.score >= 8 else RoundOutcome.REJECTED)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_stored_rounds_match_the_records(played, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    episodes, model_ids, extra = played
    url = f"sqlite:///{tmp_path / 'e.db'}" if kind == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    engine = open_database(url, migrate=True)
    with session_scope(engine) as session:
        ensure_run(session, "smollm2", "c" * 64, {})
        ensure_episodes(session, "smollm2", add_prompts(session, extra["prompts"]))
    for episode in episodes:
        store_episode(engine, "smollm2", episode, model_ids)
        store_episode(engine, "smollm2", episode, model_ids)  # a replay stores nothing new
    with session_scope(engine) as session:
        stored_rounds = session.execute(select(Round)).scalars().all()
        assert len(stored_rounds) == sum(len(e.rounds) for e in episodes)
        for round_ in stored_rounds:
            gens = session.execute(select(Generation).where(Generation.round_id == round_.id)).scalars().all()
            judged = session.execute(select(Judgment).where(Judgment.round_id == round_.id)).scalars().all()
            evidence = session.execute(select(ToolEvidence).where(ToolEvidence.round_id == round_.id)).scalars().all()
            pair = session.execute(select(PreferencePair).where(PreferencePair.round_id == round_.id)).scalar()
            if round_.outcome == RoundOutcome.FAILED:
                assert round_.failure_reason and round_.details["failures"]
                continue
            assert len(gens) == 3 and len(judged) == 3 and len(evidence) == 9  # finished, answer, steps each
            assert round_.details["ranking_method"] and round_.details["tools"] == ["reference_answer", "calculator"]
            if round_.outcome == RoundOutcome.TIE:
                assert pair is None
            else:
                assert pair is not None and pair.reward_analysis is not None
                assert (pair.reward_score is None) == (pair.accepted_by == "verified")
                assert pair.accepted == (round_.outcome == RoundOutcome.ACCEPTED)
                assert pair.chosen == gens[pair.chosen_index].text and pair.rejected == gens[pair.rejected_index].text
            for role, version in (("target", round_.target_prompt_version), ("judge", round_.judge_prompt_version)):
                assert session.execute(select(PromptVersion).where(
                    PromptVersion.role == role, PromptVersion.version == version)).scalar() is not None
        statuses = {e.prompt_id: e.status for e in session.execute(select(Episode)).scalars()}
        assert statuses == {e.prompt.id: e.status for e in episodes}, "the game's word is the stored word"
        reasons = {e.prompt_id: e.failure_reason for e in session.execute(select(Episode)).scalars()}
        assert reasons == {e.prompt.id: e.reason for e in episodes}
    engine.dispose()
