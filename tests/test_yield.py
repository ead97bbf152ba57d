"""Sampling by expected yield (pipelines/sampling.py, docs/methods.md): stepped candidates, retired prompts, pass
rates stored and exported, and final-form stops. Scripted targets whose answers are right with a known
probability; the judge is the real one with the reference-answer tool. Counted, never timed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from agents.backends import Backend, ChatRequest, ChatResult, Completion
from agents.backends.protocol import FinishReason
from agents.game import Candidate, EpisodePrompt, derived_seed
from agents.players import Judge, RewardModel, default_prompt
from pipelines.episode import EpisodeRecord, GameSettings, Players, PromptBook, play_episode
from pipelines.sampling import (
    FIT_AFTER_PROMPTS,
    STRENGTHS,
    UNIFORM,
    PassCounts,
    Prior,
    VerdictPool,
    chance_of_side,
    family_rate,
    hopeless,
    next_step,
    retired,
    round_worth,
    value_step,
)
from storage.records import prompt_id_for
from tools.reference_answer import ReferenceAnswerTool


class FixedBackend(Backend):
    """An engine that answers every request with the same text (the judge's and reward model's JSON, a target's
    answer), keeping the requests it got."""

    def __init__(self, text: str, finish_reason: FinishReason = "stop", tokens: int = 5) -> None:
        super().__init__(max_batch_size=8)
        self.text, self.finish_reason, self.tokens = text, finish_reason, tokens
        self.requests: list[ChatRequest] = []

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        self.requests += requests
        answer = Completion(self.text, self.finish_reason, self.tokens)
        return [ChatResult([answer] * r.n, prompt_tokens=10) for r in requests]


@dataclass
class ChancyTarget:
    """Each candidate is right with its prompt's probability `meta["p"]`, drawn from the seed of its step and its
    place in it (the same step drawn again gives the same answers). Each answer is 10 target tokens."""

    model_id: str = "chancy"
    rates: dict[str, float] = field(default_factory=dict)  # by prompt id, where its meta has no "p"
    samples: int = 0
    seeds: list[int] = field(default_factory=list)

    def sample(self, prompt, system_prompt, n, seed):
        self.samples += n
        self.seeds.append(seed)
        answers = []
        p = self.rates.get(prompt.id, prompt.meta.get("p"))
        for i in range(n):
            right = random.Random(derived_seed(seed, i)).random() < p
            answer = prompt.meta["answer"] + (0 if right else 1)
            answers.append(Candidate(f"The answer is {answer}.", self.model_id, "stop", 12, 10))
        return answers


def population(n: int = 66) -> list[EpisodePrompt]:
    """`n` problems whose target is right with a probability from 0 to 1 in steps of 0.1, in turn."""
    prompts = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is {i} + 100?"}]
        prompts.append(EpisodePrompt(prompt_id_for(messages), messages, {"answer": i + 100, "p": (i % 11) / 10}))
    return prompts


def players(target: ChancyTarget) -> Players:
    judge = Judge(FixedBackend("{}"), "judge", {"reference_answer": ReferenceAnswerTool()}, verdicts_decide=True)
    reward = RewardModel(FixedBackend('{"analysis": "good", "score": 9}'), "reward")
    return Players(target, judge, reward, optimizer=None)  # type: ignore[arg-type]  # verified pairs need none


def book() -> PromptBook:
    return PromptBook(default_prompt("target"), default_prompt("judge"))


def play_all(settings: GameSettings) -> dict[str, float]:
    target = ChancyTarget()
    outcomes = [play_episode(p, players(target), book(), settings) for p in population()]
    verified = sum(r.accepted_by == "verified" for e in outcomes for r in e.rounds)
    statuses = [e.status for e in outcomes]
    return {"verified": verified, "samples": target.samples, "per_sample": verified / target.samples,
            "mastered": statuses.count("mastered"), "out_of_reach": statuses.count("out_of_reach"),
            "gave_up": statuses.count("gave_up")}


PLAIN = GameSettings(candidates=2, max_rounds=3, accept_threshold=8, seed=3, verdicts_decide=True)
STEPPED = GameSettings(candidates=2, max_rounds=3, accept_threshold=8, seed=3, verdicts_decide=True,
                       max_candidates=6, step_candidates=2, retire_after=4)


def test_the_posterior_chance_of_the_missing_side() -> None:
    # Beta(1, 1) prior and k agreeing verdicts: P(the other side among the next n) = n / (k + n + 1)
    assert chance_of_side(PassCounts(3, 0), want_pass=False, n=3) == pytest.approx(3 / 7)
    assert chance_of_side(PassCounts(0, 6), want_pass=True, n=3) == pytest.approx(3 / 10)
    assert chance_of_side(PassCounts(50, 50), want_pass=False, n=4) == pytest.approx(1 - 0.5**4, abs=0.01)
    assert next_step(PassCounts(3, 0), [True, True, True], size=3, room=3, threshold=0.3) == 3
    assert next_step(PassCounts(6, 0), [True] * 6, size=3, room=3, threshold=0.3) == 0, "exactly 0.3: no step"
    assert next_step(PassCounts(1, 1), [True, False], size=2, room=4, threshold=0.3) == 0, "mixed: a pair is there"
    assert next_step(PassCounts(2, 0), [True, None], size=2, room=4, threshold=0.3) == 0, "unverifiable"
    assert next_step(PassCounts(30, 30), [True, True], size=2, room=1, threshold=0.3) == 1, "capped by the budget"
    assert retired(PassCounts(4, 0), 4, budget_spent=False) == "mastered"
    assert retired(PassCounts(0, 4), 4, budget_spent=False) is None, "out of reach only once the rounds are spent"
    assert retired(PassCounts(0, 4), 4, budget_spent=True) == "out_of_reach"
    assert retired(PassCounts(3, 1), 4, budget_spent=True) is None
    assert retired(PassCounts(9, 0), None, budget_spent=True) is None, "off by default"


def test_stepped_sampling_gets_more_verified_pairs_per_sample() -> None:
    plain, stepped = play_all(PLAIN), play_all(STEPPED)
    assert plain["mastered"] == plain["out_of_reach"] == 0
    assert stepped["mastered"] >= 6 and stepped["out_of_reach"] >= 6, stepped  # the p = 1 and p = 0 prompts
    assert stepped["per_sample"] > 1.2 * plain["per_sample"], (plain, stepped)
    assert stepped["verified"] >= plain["verified"], (plain, stepped)


def test_steps_are_seeded_from_the_round_and_replay_the_same() -> None:
    prompt = population()[5]  # p = 0.5
    first, again = ChancyTarget(), ChancyTarget()
    a = play_episode(prompt, players(first), book(), STEPPED)
    b = play_episode(prompt, players(again), book(), STEPPED)
    assert first.seeds == again.seeds and [r.steps for r in a.rounds] == [r.steps for r in b.rounds]
    round_seed = derived_seed(STEPPED.seed, prompt.id, 0)
    assert first.seeds[0] == round_seed
    if a.rounds[0].steps > 1:
        assert first.seeds[1] == derived_seed(round_seed, "step", 1)


def test_a_prior_from_earlier_runs_retires_a_mastered_prompt_in_its_first_round() -> None:
    prompt = population()[10]  # p = 1
    target = ChancyTarget()
    episode = play_episode(prompt, players(target), book(), STEPPED, prior=PassCounts(passes=5))
    assert episode.status == "mastered" and len(episode.rounds) == 1
    assert target.samples == 2, "5 earlier passes: no second step is worth sampling"
    assert episode.counts == PassCounts(passes=7) and episode.own == PassCounts(passes=2)


def hard_family(n: int = 60) -> list[EpisodePrompt]:
    """`n` problems of a family the target rarely solves: seven in ten never (p = 0), two in ten at 0.3, one at
    0.7: the built-in arithmetic set as SmolLM2-135M sees it."""
    rates = [0.0] * 7 + [0.3, 0.3, 0.7]
    prompts = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is {i} + 200?"}]
        prompts.append(EpisodePrompt(prompt_id_for(messages), messages, {"answer": i + 200, "p": rates[i % 10]}))
    return prompts


def play_family(settings: GameSettings, prompts: list[EpisodePrompt] | None = None) -> dict[str, float]:
    """The prompts (the hard family) played in order by one process, its episodes' verdicts pooled."""
    target, pool = ChancyTarget(), VerdictPool()
    outcomes = [play_episode(p, players(target), book(), settings, pool=pool) for p in prompts or hard_family()]
    verified = sum(r.accepted_by == "verified" for e in outcomes for r in e.rounds)
    return {"verified": verified, "samples": target.samples, "per_sample": verified / target.samples,
            "rounds": sum(len(e.rounds) for e in outcomes), "pool": pool.counts(),
            "stopped": sum("stopped after" in (e.reason or "") for e in outcomes)}


def test_a_pooled_prior_is_uniform_until_verdicts_come_and_then_leans_to_the_family() -> None:
    assert Prior.pooled(PassCounts(), strength=2.0) == UNIFORM
    hard = Prior.pooled(PassCounts(passes=2, fails=38), strength=2.0)
    assert hard.passes == pytest.approx(2 * 3 / 42) and hard.passes + hard.fails == pytest.approx(2.0)
    four_wrong = PassCounts(fails=4)
    assert chance_of_side(four_wrong, want_pass=True, n=4, prior=hard) < 0.15 < 0.4 < chance_of_side(
        four_wrong, want_pass=True, n=4)
    assert next_step(four_wrong, [False] * 4, size=4, room=4, threshold=0.3) == 4
    assert next_step(four_wrong, [False] * 4, size=4, room=4, threshold=0.3, prior=hard) == 0
    assert hopeless(four_wrong, 4, 0.2, prior=hard) == pytest.approx(chance_of_side(four_wrong, True, 4, hard))
    assert hopeless(four_wrong, 4, 0.2) is None, "Beta(1, 1): 4/9 > 0.2"
    assert hopeless(four_wrong, 4, None, prior=hard) is None, "off"
    assert hopeless(PassCounts(1, 3), 4, 0.99, prior=hard) is None, "mixed verdicts: a pair can still come"
    assert hopeless(PassCounts(), 4, 0.99) is None, "nothing checked yet"
    assert PassCounts(3, 5) - PassCounts(1, 5) == PassCounts(2, 0)


def test_the_fitted_prior_weight_tells_prompts_alike_from_prompts_whose_pass_rates_spread() -> None:
    """`game.prior_strength: auto`: 24 prompts that all pass at 0.1 fit a heavy prior (a prompt's own few verdicts
    say little), 24 that pass at 0 or 0.6 in turn a light one; with fewer than 8 prompts, the fallback."""
    rng = random.Random(0)
    alike, spread = VerdictPool(), VerdictPool()
    for i in range(24):
        passes = sum(rng.random() < 0.1 for _ in range(12))
        alike.add(PassCounts(passes, 12 - passes), f"alike-{i}")
        passes = sum(rng.random() < (0.0 if i % 2 else 0.6) for _ in range(12))
        spread.add(PassCounts(passes, 12 - passes), f"spread-{i}")
    assert alike.strength(fallback=2.0) >= 16 and spread.strength(fallback=2.0) <= 2, (
        alike.strength(2.0), spread.strength(2.0))
    assert alike.counts().samples == spread.counts().samples == 24 * 12
    fitted = EpisodeRecord(hard_family()[0], GameSettings(pooled_prior=True, prior_strength=None), pool=alike)
    prior = fitted.beta_prior()
    assert prior.passes + prior.fails == pytest.approx(alike.strength(fallback=2.0))
    assert prior.passes / (prior.passes + prior.fails) == pytest.approx((34 + 1) / (24 * 12 + 2))
    few = VerdictPool()
    for i in range(FIT_AFTER_PROMPTS - 1):
        few.add(PassCounts(1, 3), f"few-{i}")
    assert few.strength(fallback=3.0) == 3.0
    few.add(PassCounts(1, 3), "few-last")
    assert few.strength(fallback=3.0) == max(STRENGTHS), "every prompt passing 1 of 4: as alike as can be"


POOLED = GameSettings(candidates=2, max_rounds=3, accept_threshold=8, seed=3, verdicts_decide=True,
                      max_candidates=6, step_candidates=2, retire_after=4, pooled_prior=True, round_threshold=0.2)


def test_a_pooled_prior_spends_fewer_samples_per_pair_on_a_family_the_model_rarely_solves() -> None:
    stepped, pooled = play_family(STEPPED), play_family(POOLED)
    assert stepped["stopped"] == 0 and pooled["stopped"] > 0, (stepped, pooled)
    assert pooled["rounds"] < stepped["rounds"], (stepped, pooled)
    assert pooled["per_sample"] > 1.3 * stepped["per_sample"], (stepped, pooled)
    assert pooled["verified"] >= 0.8 * stepped["verified"], (stepped, pooled)
    assert pooled["pool"].samples == pooled["samples"], "every checked candidate joined the pool"


def test_the_value_rule_pays_for_a_step_only_at_the_familys_own_yield() -> None:
    """`game.step_rule: value`: worth = expected pairs - rate x candidates. With the pass rate known to be 1/2, a
    round of 2 gives a pair half the time (rate 1/4 per candidate); a third candidate on the agreeing pair adds
    1/2 a pair for 1: 0.5 - 2r + 0.5 (0.5 - r) = 0 gives 0.3."""
    known = Prior(5e5, 5e5)
    assert family_rate(known, first=2, size=1, budget=2) == pytest.approx(0.25, abs=1e-6)
    assert family_rate(known, first=2, size=1, budget=3) == pytest.approx(0.3, abs=1e-6)
    hard = Prior.pooled(PassCounts(passes=2, fails=38), strength=2.0)
    two_wrong = PassCounts(fails=2)
    assert value_step(two_wrong, [False, False], first=2, size=2, room=4) == 1, "Beta(1, 1): one more is worth it"
    assert value_step(two_wrong, [False, False], first=2, size=2, room=4, prior=hard) == 0, "a family rarely right"
    assert value_step(PassCounts(1, 1), [True, False], first=2, size=2, room=4) == 0, "mixed: the pair is there"
    assert value_step(PassCounts(1, 0), [True, None], first=2, size=2, room=4) == 0, "unverifiable"
    assert value_step(two_wrong, [False, False], first=2, size=2, room=0) == 0, "no room left"
    assert round_worth(two_wrong, first=2, size=2, budget=6, prior=hard) < 0, "ends where a fresh prompt pays more"
    assert round_worth(PassCounts(), 2, 2, 6, hard) is None, "nothing checked yet"
    assert round_worth(PassCounts(1, 3), 2, 2, 6, hard) is None, "mixed verdicts: a pair can still come"
    assert round_worth(PassCounts(fails=1), first=2, size=2, budget=6) is None, "Beta(1, 1): worth another round"


def test_the_value_rule_gets_more_verified_pairs_per_sample_than_the_chance_thresholds() -> None:
    """The same pooled game, steps and rounds decided by the chance thresholds or by value: on prompts whose pass
    rates spread from 0 to 1 and on a family mostly out of reach, more verified pairs per target sample."""
    value = replace(POOLED, step_rule="value")
    for prompts, gain in ((population(), 1.15), (hard_family(), 1.0)):
        by_chance, by_value = play_family(POOLED, prompts), play_family(value, prompts)
        assert by_value["per_sample"] > gain * by_chance["per_sample"], (by_chance, by_value)
        assert by_value["verified"] >= 0.7 * by_chance["verified"], (by_chance, by_value)


def test_each_steps_verdicts_join_the_pool_as_soon_as_they_are_checked() -> None:
    """Episodes in flight at once decide their steps on what the others checked so far, not on what their
    finished rounds left: a run's first episodes must not all draw a second step on an empty pool."""

    @dataclass
    class Watching(ChancyTarget):
        pool: VerdictPool = field(default_factory=VerdictPool)
        pool_at_call: list[PassCounts] = field(default_factory=list)

        def sample(self, prompt, system_prompt, n, seed):
            self.pool_at_call.append(self.pool.counts())
            return super().sample(prompt, system_prompt, n, seed)

    target = Watching()
    settings = GameSettings(candidates=2, max_rounds=1, seed=3, verdicts_decide=True, max_candidates=6,
                            step_candidates=2, pooled_prior=True)
    episode = play_episode(hard_family()[0], players(target), book(), settings, pool=target.pool)
    assert episode.rounds[0].steps == 2, "Beta(1, 1) with nothing pooled: 2 fails leave 2/5 for a pass in 2"
    assert target.pool_at_call == [PassCounts(), PassCounts(fails=2)], target.pool_at_call
    assert episode.pooled == target.pool.counts() == PassCounts(fails=4)


def test_an_episode_ended_by_the_round_threshold_says_why_and_retires_only_after_n_samples() -> None:
    prompt = hard_family()[0]  # p = 0
    pool = VerdictPool()
    pool.add(PassCounts(passes=1, fails=39))  # the family so far
    settings = GameSettings(candidates=2, max_rounds=3, seed=3, verdicts_decide=True, pooled_prior=True,
                            round_threshold=0.2)
    episode = play_episode(prompt, players(ChancyTarget()), book(), settings, pool=pool)
    assert len(episode.rounds) == 1 and episode.status == "gave_up"
    assert episode.reason.startswith("stopped after 1 of 3 rounds: all 2 samples failed"), episode.reason
    assert "game.round_threshold 0.2" in episode.reason
    assert pool.counts() == PassCounts(passes=1, fails=41)
    retiring = GameSettings(candidates=2, max_rounds=3, seed=3, verdicts_decide=True, pooled_prior=True,
                            round_threshold=0.2, retire_after=2)
    assert play_episode(prompt, players(ChancyTarget()), book(), retiring, pool=pool).status == "out_of_reach"
    alone = play_episode(prompt, players(ChancyTarget()), book(), settings)  # no pool: Beta(1, 1)
    assert len(alone.rounds) == 3, "Beta(1, 1): a pass among the next 2 after 2 and 4 failures, 2/5 and 2/7 > 0.2"


MODEL = "smollm2-135m-instruct"  # the quickstart's target, by name: what retired prompts are kept for
RETIRING = ["prompts=[{builtin: arithmetic, limit: 3, seed: 0}]", "game.candidates=2", "game.max_rounds=2",
            "game.max_candidates=4", "game.retire_after=2"]


def _play_run(
    url: str, run_id: str, overrides: list[str], rates: list[float], skip_retired_by=(), pool=None
) -> list[str]:
    """One synthesis run of the arithmetic prompts with a chancy target (`rates` in source order), its rounds
    stored as the synthesizer stores them (the episodes' verdicts pooled in `pool`); the prompt ids it played."""
    from configs import load_config
    from pipelines.game_setup import game_settings, model_ids, new_prompt_book
    from pipelines.recording import store_played_round
    from pipelines.synthesis.playing import play_pending
    from pipelines.synthesis.run import finish, prepare_run

    config = load_config("quickstart", overrides)
    run = prepare_run(config, run_id, url, limit=None, only_unplayed=True, skip_retired_by=skip_retired_by)
    order = list(run.prompts)
    target = ChancyTarget(model_id=MODEL, rates={pid: rate for pid, rate in zip(order, rates, strict=True)})
    book, settings, ids = new_prompt_book(), game_settings(config), model_ids(config)
    for item in run.pending:
        play_pending(item, run.prompts[item.prompt_id], players(target), book, settings,
                     lambda e, r: store_played_round(run.engine, run_id, e, r, ids), pool)
    finish(run, book, None)
    return [order.index(item.prompt_id) for item in run.pending]


def test_retired_prompts_are_stored_skipped_for_their_model_and_pass_rates_exported(empty_db_url, tmp_path) -> None:
    import json

    from sqlalchemy import select

    from pipelines.export import export_run
    from storage.db import session_scope
    from storage.migrate import open_database
    from storage.models import Episode
    from storage.queries import run_summary

    assert _play_run(empty_db_url, "first", RETIRING, [1.0, 0.5, 0.0]) == [0, 1, 2]
    engine = open_database(empty_db_url)
    with session_scope(engine) as session:
        rows = {e.prompt_id: e for e in session.execute(select(Episode).where(Episode.run_id == "first")).scalars()}
        first = {pid: (e.status, e.samples, e.passes, e.pass_rate, e.target_model) for pid, e in rows.items()}
        summary = run_summary(session, "first")
    statuses = sorted(status for status, *_ in first.values())
    assert statuses == ["accepted", "mastered", "out_of_reach"], first
    for status, samples, passes, pass_rate, model in first.values():
        assert model == MODEL and pass_rate == pytest.approx((1 + passes) / (2 + samples))
        if status == "mastered":
            assert samples == passes >= 2
        if status == "out_of_reach":
            assert passes == 0 and samples >= 2
    assert (summary.mastered, summary.out_of_reach, summary.verified_pairs) == (1, 1, 1)
    assert summary.target_tokens == 10 * sum(samples for _, samples, *_ in first.values())
    assert summary.verified_per_1k_tokens == pytest.approx(1000 / summary.target_tokens, abs=1e-3)

    # what `refresh` asks for (another config hash: nothing is skipped as played): the retired prompts are left
    # out for this model, and the prompt left starts from the verdicts the first run stored
    assert _play_run(empty_db_url, "second", [*RETIRING, "sampling.seed=1"], [1.0, 0.5, 0.0], [MODEL]) == [1]
    assert _play_run(empty_db_url, "third", [*RETIRING, "sampling.seed=2"], [1.0, 0.5, 0.0], ["other"]) == [0, 1, 2]
    with session_scope(engine) as session:
        (accepted,) = [pid for pid, (status, *_) in first.items() if status == "accepted"]
        second = session.execute(
            select(Episode).where(Episode.run_id == "second", Episode.prompt_id == accepted)
        ).scalar_one()
        assert (second.prior_samples, second.prior_passes) == first[accepted][1:3]

    # game.prior_from_history off: a run's estimates start from its own candidates, whatever the database holds
    _play_run(empty_db_url, "fourth", [*RETIRING, "sampling.seed=3", "game.prior_from_history=false"], [1.0, 0.5, 0.0])
    with session_scope(engine) as session:
        fourth = session.execute(select(Episode).where(Episode.run_id == "fourth")).scalars().all()
        assert fourth and all((e.prior_samples, e.prior_passes) == (0, 0) for e in fourth)

    result = export_run(engine, "first", tmp_path / "out", fmt="jsonl")
    (row,) = [json.loads(line) for line in (result.path / "data.jsonl").read_text().splitlines()]
    assert row["accepted_by"] == "verified" and row["prompt_id"] == accepted
    assert (row["pass_rate"], row["samples"]) == (pytest.approx(first[accepted][3]), first[accepted][1])
    engine.dispose()


def test_episodes_ended_early_by_a_pooled_prior_are_stored_with_their_reason(empty_db_url) -> None:
    from sqlalchemy import select

    from pipelines.synthesis.run import pending_episodes
    from storage.db import session_scope
    from storage.migrate import open_database
    from storage.models import Episode

    overrides = ["prompts=[{builtin: arithmetic, limit: 3, seed: 0}]", "game.candidates=2", "game.max_rounds=3",
                 "game.pooled_prior=true", "game.round_threshold=0.2"]
    assert _play_run(empty_db_url, "pooled", overrides, [0.0, 0.0, 0.0], pool=VerdictPool()) == [0, 1, 2]
    engine = open_database(empty_db_url)
    with session_scope(engine) as session:
        rows = {e.prompt_id: e for e in session.execute(select(Episode).where(Episode.run_id == "pooled")).scalars()}
        assert pending_episodes(session, "pooled") == []
    engine.dispose()
    first, *later = sorted(rows.values(), key=lambda e: -e.rounds_played)
    # the first episode had no pooled verdicts (Beta(1, 1)): all three rounds; the later ones, with its six
    # failures pooled, stop after one
    assert (first.rounds_played, first.status, first.samples) == (3, "gave_up", 6), rows
    for episode in later:
        assert (episode.rounds_played, episode.status, episode.samples, episode.passes) == (1, "gave_up", 2, 0)
        assert episode.failure_reason.startswith("stopped after 1 of 3 rounds: all 2 samples failed")


def test_episodes_ended_by_the_value_rule_are_stored_with_their_reason(empty_db_url) -> None:
    """Through the config: `game.step_rule: value`, `game.prior_strength: auto`. Two wrong answers under
    Beta(1, 1) already make another round worth less than a fresh prompt's (2/4 for a pass among 2, at the rate
    a uniform family gives), so each episode stops after one, saying so."""
    from sqlalchemy import select

    from storage.db import session_scope
    from storage.migrate import open_database
    from storage.models import Episode

    overrides = ["prompts=[{builtin: arithmetic, limit: 3, seed: 0}]", "game.candidates=2", "game.max_rounds=3",
                 "game.pooled_prior=true", "game.step_rule=value", "game.prior_strength=auto"]
    assert _play_run(empty_db_url, "valued", overrides, [0.0, 0.0, 0.0], pool=VerdictPool()) == [0, 1, 2]
    engine = open_database(empty_db_url)
    with session_scope(engine) as session:
        rows = list(session.execute(select(Episode).where(Episode.run_id == "valued")).scalars())
    engine.dispose()
    assert len(rows) == 3
    for episode in rows:
        assert (episode.rounds_played, episode.status, episode.samples, episode.passes) == (1, "gave_up", 2, 0)
        assert episode.failure_reason.startswith("stopped after 1 of 3 rounds: all 2 samples failed")
        assert episode.failure_reason.endswith("(game.step_rule value)"), episode.failure_reason


def test_an_arithmetic_candidate_stops_after_its_final_sentence() -> None:
    from agents.game import final_form_stops
    from agents.players import Target
    from configs.schema import SamplingConfig

    prompt = population()[3]
    backend = FixedBackend(
        "3 + 4 = 7. So 7.5 is not it. The answer is 7. Also, here is a long aside that goes on", "length", 40
    )
    (plain,) = Target(backend, "t", SamplingConfig()).sample(prompt, "sys", 1, 0)
    assert plain.finish_reason == "length" and "aside" in plain.text
    arithmetic = EpisodePrompt(prompt.id, prompt.messages, {"task": "arithmetic"})
    (cut,) = Target(backend, "t", SamplingConfig(), stop_at_final_answer=True).sample(arithmetic, "sys", 1, 0)
    assert cut.text == "3 + 4 = 7. So 7.5 is not it. The answer is 7." and cut.finish_reason == "stop"
    assert backend.requests[-1].stop_patterns == final_form_stops(arithmetic) != []
    assert backend.requests[0].stop_patterns == [], "off, or a family without a final form: no stop"


def test_a_target_asks_to_abandon_false_steps_only_where_the_calculator_checks_them() -> None:
    from agents.players import Target
    from configs import load_config
    from configs.schema import SamplingConfig
    from pipelines.game_setup import build_players

    backend = FixedBackend("She has 21 - 9 = 11 stickers left over. The answer is 11.", "stop", 20)
    target = Target(backend, "t", SamplingConfig(), abandon_false_steps=True)
    prompt = population()[3]
    arithmetic = EpisodePrompt(prompt.id, prompt.messages, {"task": "arithmetic", "answer": "12"})
    (cut,) = target.sample(arithmetic, "sys", 1, 0)
    assert (cut.text, cut.finish_reason) == ("She has 21 - 9 = 11", "abandoned")
    (code,) = target.sample(EpisodePrompt(prompt.id, prompt.messages, {"tests": "assert f()"}), "sys", 1, 0)
    assert [r.abandon_on for r in backend.requests] == [["false_step"], []]
    assert code.finish_reason == "stop", "no calculator on code: nothing abandoned"
    for enabled, abandons in (("[reference_answer, calculator]", True), ("[reference_answer]", False)):
        config = load_config("quickstart", ["game.abandon_false_steps=true", f"tools.enabled={enabled}"])
        assert build_players(config, {"default": backend}).target.abandon_false_steps is abandons


def test_max_candidates_below_candidates_is_refused_naming_both() -> None:
    from configs import load_config
    from configs.errors import ConfigError

    with pytest.raises(ConfigError, match=r"game.max_candidates \(2\) must be at least game.candidates \(3\)"):
        load_config("quickstart", ["game.candidates=3", "game.max_candidates=2"])
    assert load_config("quickstart", []).game.max_candidates is None, "off unless set"


class Killed(Exception):
    """The synthesizer dying right after a round was stored."""


def _stored(url: str, run_id: str) -> list[tuple]:
    from sqlalchemy import select

    from storage.db import session_scope
    from storage.migrate import open_database
    from storage.models import Episode, Generation, Round

    engine = open_database(url)
    with session_scope(engine) as session:
        rows = session.execute(
            select(Episode.prompt_id, Round.index, Round.outcome, Round.details, Generation.index, Generation.text)
            .join(Round, Round.episode_id == Episode.id)
            .join(Generation, Generation.round_id == Round.id)
            .where(Episode.run_id == run_id)
            .order_by(Episode.prompt_id, Round.index, Generation.index)
        ).all()
        tallies = session.execute(
            select(Episode.prompt_id, Episode.status, Episode.samples, Episode.passes, Episode.pass_rate)
            .where(Episode.run_id == run_id).order_by(Episode.prompt_id)
        ).all()
    engine.dispose()
    return [(p, i, o, d["steps"], d["seed"], g, t) for p, i, o, d, g, t in rows] + [tuple(t) for t in tallies]


def test_a_run_cut_between_rounds_resumes_the_same_steps(empty_db_url) -> None:
    """The in-process form of the kill -9 test (tests/test_faults.py plays it on the real stack): a run that dies
    after its first stored round, rerun, holds what an uninterrupted run holds, steps and pass rates included."""
    from configs import load_config
    from pipelines.game_setup import game_settings, model_ids, new_prompt_book
    from pipelines.recording import store_played_round
    from pipelines.synthesis.playing import play_pending
    from pipelines.synthesis.run import finish, prepare_run

    overrides = [*RETIRING, "game.max_rounds=3", "game.retire_after=20"]  # nothing retires: rounds to cut between
    rates = [0.9, 0.5, 0.1]

    def play(run_id: str, die_after: int | None) -> None:
        # the uninterrupted run's target by another name: its verdicts are no prior of the cut run's episodes
        config = load_config("quickstart", [*overrides, f"models.default.name={MODEL}-{run_id}"])
        run = prepare_run(config, run_id, empty_db_url, limit=None, only_unplayed=False)
        target = ChancyTarget(model_id=MODEL, rates=dict(zip(list(run.prompts), rates, strict=True)))
        book, settings, ids, stored = new_prompt_book(), game_settings(config), model_ids(config), []

        def on_round(episode, record) -> None:
            store_played_round(run.engine, run_id, episode, record, ids)
            stored.append(record.index)
            if die_after is not None and len(stored) == die_after:
                raise Killed()

        try:
            for item in run.pending:
                play_pending(item, run.prompts[item.prompt_id], players(target), book, settings, on_round)
        except Killed:
            finish(run, book, "killed")
            return
        finish(run, book, None)

    play("whole", None)
    play("cut", 2)  # the first episode's first two rounds, then the process is gone
    assert _stored(empty_db_url, "cut") != _stored(empty_db_url, "whole")
    play("cut", None)
    whole = _stored(empty_db_url, "whole")
    assert _stored(empty_db_url, "cut") == whole
    assert any(steps > 1 for _, _, _, steps, *_ in whole[:-3]), "no round sampled a second step"


def test_migration_0008_gives_stored_episodes_their_model_and_verdict_counts(empty_db_url) -> None:
    import sqlalchemy as sa
    from alembic import command

    from storage.db import create_db_engine
    from storage.migrate import upgrade
    from storage.models import utcnow
    from tests.test_storage import _migrate

    _migrate(empty_db_url, command.upgrade, "0007")
    engine = create_db_engine(empty_db_url)
    now = utcnow()

    def table(name: str, *columns: str, json: tuple[str, ...] = ()) -> sa.TableClause:
        return sa.table(name, *(sa.column(c) for c in columns), *(sa.column(c, sa.JSON()) for c in json))

    with engine.begin() as conn:
        conn.execute(table("prompts", "id", "source", "created_at", json=("messages", "meta")).insert().values(
            id="p", messages=[], source="", meta={}, created_at=now))
        config = {"models": {"m": {"name": "the-target"}}, "roles": {"target": "m"}}
        conn.execute(table("runs", "id", "config_hash", "status", "created_at", "updated_at",
                           "current_target_prompt_version", "current_judge_prompt_version",
                           json=("config", "metrics")).insert().values(
            id="old", config_hash="a" * 64, config=config, metrics={}, status="completed", created_at=now,
            updated_at=now, current_target_prompt_version=0, current_judge_prompt_version=0))
        conn.execute(table("episodes", "id", "run_id", "prompt_id", "status", "rounds_played", "created_at").insert()
                     .values(id="e", run_id="old", prompt_id="p", status="gave_up", rounds_played=1, created_at=now))
        conn.execute(table("rounds", "id", "episode_id", "index", "target_prompt_version", "judge_prompt_version",
                           "outcome", "created_at", json=("details",)).insert().values(
            id=1, episode_id="e", index=0, target_prompt_version=0, judge_prompt_version=0, outcome="tie",
            details={}, created_at=now))
        judgments = table("judgments", "round_id", "generation_index", "rationale", "verified", "model_id")
        for i, verified in enumerate([True, False, None, False]):
            conn.execute(judgments.insert().values(round_id=1, generation_index=i, rationale="", verified=verified,
                                                   model_id="j"))
    engine.dispose()

    upgrade(empty_db_url)
    engine = create_db_engine(empty_db_url)
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT target_model, samples, passes, pass_rate, prior_samples FROM episodes")).one()
    assert tuple(row) == ("the-target", 3, 1, pytest.approx(2 / 5), 0)
    engine.dispose()
    _migrate(empty_db_url, command.downgrade, "0007")
