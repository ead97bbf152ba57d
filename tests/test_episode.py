"""Game logic of one Anyprefer episode with scripted players: no model, no Ray, no database."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from agents.backends import Backend, ChatRequest, ChatResult, Completion
from agents.game import Candidate, EpisodePrompt, Graded, PlayerFailure, Ranking, ScoredCandidate, ToolCall
from agents.players import RANKING_METHOD, Judge, default_prompt
from agents.verdicts import PromptRewrite, RewardVerdict
from pipelines.episode import GameSettings, Players, PromptBook, PromptRef, play_episode
from tools.base import Evidence, JudgeTool, PromptContext
from tools.reference_answer import ReferenceAnswerTool

PROMPT = EpisodePrompt(id="p" * 64, messages=[{"role": "user", "content": "What is 2 + 2?"}], meta={"answer": 4})
SETTINGS = GameSettings(candidates=2, max_rounds=3, accept_threshold=8, seed=7)


@dataclass
class ScriptedTarget:
    """Answers as scripted: text (how it ended not said) or a `Candidate` with its finish reason."""

    answers: list[list[str | Candidate] | PlayerFailure]
    model_id: str = "scripted-target"
    seen: list[tuple[str, int]] = field(default_factory=list)

    def sample(self, prompt, system_prompt, n, seed):
        self.seen.append((system_prompt, seed))
        answer = self.answers[len(self.seen) - 1]
        if isinstance(answer, PlayerFailure):
            return answer
        return [t if isinstance(t, Candidate) else Candidate(text=t, model_id=self.model_id) for t in answer]


@dataclass
class ScriptedJudge:
    scores: list[list[float] | PlayerFailure]
    model_id: str = "scripted-judge"
    seen_prompts: list[str] = field(default_factory=list)

    def choose_tools(self, prompt):
        return []

    def investigate(self, prompt, candidates, tool_names):
        return []

    def rank(self, prompt, candidates, calls, system_prompt):
        self.seen_prompts.append(system_prompt)
        scores = self.scores[len(self.seen_prompts) - 1]
        if isinstance(scores, PlayerFailure):
            return scores
        return Ranking([ScoredCandidate(i, s, f"rationale {i}", None, s) for i, s in enumerate(scores)], "scripted")


@dataclass
class ScriptedReward:
    scores: list[int | PlayerFailure]
    model_id: str = "scripted-reward"
    calls: int = 0

    def grade(self, prompt, chosen, rejected, ranking, chosen_index, rejected_index, calls):
        score = self.scores[self.calls]
        self.calls += 1
        if isinstance(score, PlayerFailure):
            return score
        return Graded(RewardVerdict(analysis=f"analysis {score}", score=score), raw=json.dumps({"score": score}))


@dataclass
class ScriptedOptimizer:
    fail: bool = False
    model_id: str = "scripted-optimizer"
    seen: list[dict[str, Any]] = field(default_factory=list)

    def rewrite(self, prompt, candidates, ranking, chosen_index, rejected_index, reward, threshold, target_prompt,
                judge_prompt):
        self.seen.append({"analysis": reward.analysis, "rationales": [s.rationale for s in ranking.scored],
                          "target_prompt": target_prompt})
        if self.fail:
            return PlayerFailure("optimizer", "no valid answer", raw=["{not json"])
        n = len(self.seen)
        return Graded(PromptRewrite(target_critique=f"tc{n}", target_prompt=f"target prompt v{n} be exact",
                                    judge_critique=f"jc{n}", judge_prompt=f"judge prompt v{n} be strict"), raw="{}")


def players(target, judge, reward, optimizer=None) -> Players:
    return Players(target, judge, reward, optimizer or ScriptedOptimizer())


def book() -> PromptBook:
    return PromptBook(default_prompt("target"), default_prompt("judge"))


def test_accepted_at_round_one() -> None:
    target = ScriptedTarget([["4", "5"]])
    shared = book()
    episode = play_episode(PROMPT, players(target, ScriptedJudge([[9, 3]]), ScriptedReward([9])), shared, SETTINGS)
    assert episode.status == "accepted" and len(episode.rounds) == 1
    (round_,) = episode.rounds
    assert (round_.chosen_index, round_.rejected_index, round_.reward.score) == (0, 1, 9)
    assert round_.target_prompt.version == round_.judge_prompt.version == 0
    assert round_.rewrite is None and episode.promoted == []
    assert shared.current()[0].version == 0


def test_accepted_after_a_rewrite_and_rewrite_promoted() -> None:
    target, judge = ScriptedTarget([["4", "5"], ["4", "22"]]), ScriptedJudge([[8, 4], [9, 1]])
    optimizer = ScriptedOptimizer()
    shared = book()
    episode = play_episode(PROMPT, players(target, judge, ScriptedReward([5, 9]), optimizer), shared, SETTINGS)
    assert episode.status == "accepted" and [r.outcome for r in episode.rounds] == ["rejected", "accepted"]
    # The optimizer saw the reward model's critique and the judge's rationales.
    assert optimizer.seen[0]["analysis"] == "analysis 5"
    assert optimizer.seen[0]["rationales"] == ["rationale 0", "rationale 1"]
    second = episode.rounds[1]
    assert (second.target_prompt.version, second.target_prompt.text) == (1, "target prompt v1 be exact")
    assert target.seen[1][0] == "target prompt v1 be exact" and judge.seen_prompts[1] == "judge prompt v1 be strict"
    assert episode.rounds[0].rewrite.target_critique == "tc1"
    assert [(r.role, r.version) for r in episode.promoted] == [("target", 1), ("judge", 1)]
    current_target, current_judge = shared.current()
    assert (current_target.version, current_judge.version) == (1, 1)


def test_gives_up_after_max_rounds() -> None:
    optimizer = ScriptedOptimizer()
    target = ScriptedTarget([["4", "5"]] * 3)
    episode = play_episode(PROMPT, players(target, ScriptedJudge([[7, 2]] * 3), ScriptedReward([3, 4, 5]), optimizer),
                           book(), SETTINGS)
    assert episode.status == "gave_up" and len(episode.rounds) == 3
    assert "best reward 5" in episode.reason and "rejected, rejected, rejected" in episode.reason
    assert len(optimizer.seen) == 2, "no rewrite after the last round"
    assert [r.target_prompt.version for r in episode.rounds] == [0, 1, 2]
    assert episode.promoted == []


def test_ties_retry_with_a_new_seed() -> None:
    target = ScriptedTarget([["4", "5"], ["4", "4 "], ["4", "9"]])
    judge = ScriptedJudge([[6, 6], [9, 2], [9, 2]])
    reward = ScriptedReward([9])
    episode = play_episode(PROMPT, players(target, judge, reward), book(), SETTINGS)
    assert [r.outcome for r in episode.rounds] == ["tie", "tie", "accepted"]
    assert "tie" in episode.rounds[0].failure_reason
    assert episode.rounds[1].chosen_index is None, "identical texts are a tie whatever the scores"
    seeds = [seed for _, seed in target.seen]
    assert len(set(seeds)) == 3
    again = ScriptedTarget([["4", "5"], ["4", "4 "], ["4", "9"]])
    play_episode(PROMPT, players(again, ScriptedJudge([[6, 6], [9, 2], [9, 2]]), ScriptedReward([9])), book(), SETTINGS)
    assert [seed for _, seed in again.seen] == seeds, "seeds derive from (run seed, prompt, round) only"


def test_parse_failures_are_recorded_not_raised() -> None:
    bad_judge = PlayerFailure("judge", "no valid answer in 3 attempts", raw=["{oops", "{oops", "nope"])
    target = ScriptedTarget([["4", "5"]] * 3)
    judge = ScriptedJudge([bad_judge, [9, 1], [9, 1]])
    reward = ScriptedReward([PlayerFailure("reward", "no valid answer", raw=["10/10"]), 9])
    episode = play_episode(PROMPT, players(target, judge, reward), book(), SETTINGS)
    assert [r.outcome for r in episode.rounds] == ["failed", "failed", "accepted"]
    assert episode.rounds[0].failures[0].raw == ["{oops", "{oops", "nope"]
    assert episode.rounds[0].failure_reason.startswith("judge: ")
    assert episode.rounds[1].failure_reason.startswith("reward: ")

    all_failed = play_episode(
        PROMPT, players(ScriptedTarget([PlayerFailure("target", "EngineError: boom")] * 3), ScriptedJudge([]),
                        ScriptedReward([])), book(), SETTINGS)
    assert all_failed.status == "failed" and all_failed.reason == "target: EngineError: boom"


def test_optimizer_failure_keeps_prompts() -> None:
    target = ScriptedTarget([["4", "5"], ["4", "5"]])
    episode = play_episode(PROMPT, players(target, ScriptedJudge([[9, 1], [9, 1]]), ScriptedReward([3, 9]),
                                           ScriptedOptimizer(fail=True)), book(), SETTINGS)
    assert episode.status == "accepted"
    assert episode.rounds[0].failures[0].role == "optimizer"
    assert episode.rounds[1].target_prompt.version == 0


class CannedBackend(Backend):
    """Answers every request with fixed text: a unit test of the judge's ranking arithmetic, not an engine."""

    def __init__(self, text: str) -> None:
        super().__init__(max_batch_size=8)
        self.text = text

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return [ChatResult([Completion(self.text, "stop", 5)], prompt_tokens=10) for _ in requests]


class BrokenTool(JudgeTool):
    name: str = "broken"
    description: str = "always fails"

    def _run(self, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        return None if candidate is None else {}


def test_verified_verdicts_outweigh_the_judge_and_tool_failures_are_evidence() -> None:
    opinion = {"candidate_1": {"rationale": "looks great", "score": 9}, "candidate_2": {"rationale": "meh", "score": 2}}
    judge = Judge(CannedBackend(json.dumps(opinion)), "canned",
                  {"reference_answer": ReferenceAnswerTool(), "broken": BrokenTool()})
    candidates = [Candidate("2 + 2 = 5", "m"), Candidate("The answer is 4.", "m")]
    tools = judge.choose_tools(PROMPT)
    assert tools == ["reference_answer", "broken"]
    calls = judge.investigate(PROMPT, candidates, tools)
    broken = [c for c in calls if c.tool == "broken"]
    assert len(broken) == 2 and all(not c.evidence.ok and "disk on fire" in c.evidence.error for c in broken)
    ranking = judge.rank(PROMPT, candidates, calls, "be strict")
    assert ranking.method == RANKING_METHOD
    best, worst = ranking.best_and_worst()
    assert (best.index, best.judge_score, best.verified, best.final_score) == (1, 2.0, True, 12.0)
    assert (worst.index, worst.judge_score, worst.verified, worst.final_score) == (0, 9.0, False, -1.0)


def test_judge_without_parseable_answer_ranks_on_verdicts_alone() -> None:
    judge = Judge(CannedBackend("I like the first one"), "canned", {"reference_answer": ReferenceAnswerTool()},
                  parse_retries=1)
    candidates = [Candidate("5", "m"), Candidate("4", "m")]
    calls = judge.investigate(PROMPT, candidates, ["reference_answer"])
    ranking = judge.rank(PROMPT, candidates, calls, "be strict")
    assert ranking.method.startswith("tool verdicts only") and ranking.best_and_worst()[0].index == 1
    no_tools = Judge(CannedBackend("I like the first one"), "canned", {}, parse_retries=1)
    failure = no_tools.rank(PROMPT, candidates, [], "be strict")
    assert isinstance(failure, PlayerFailure) and failure.raw == ["I like the first one"] * 2


def test_prompt_book_first_promotion_wins_and_versions_are_unique() -> None:
    shared = book()
    target0, _ = shared.current()
    rival_a = shared.propose(target0, "rewrite A", "critique A")
    rival_b = shared.propose(target0, "rewrite B", "critique B")
    assert shared.promote(rival_b) and not shared.promote(rival_a)
    assert shared.current()[0] == rival_b
    child = shared.propose(rival_b, "rewrite of B", "more")
    assert shared.promote(child) and shared.current()[0].version == child.version

    proposals: list[PromptRef] = []
    lock = threading.Lock()

    def propose_many(thread: int) -> None:
        for i in range(50):
            ref = shared.propose(child, f"text {thread}.{i}", "c")
            with lock:
                proposals.append(ref)

    threads = [threading.Thread(target=propose_many, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = [p.version for p in proposals]
    assert len(versions) == len(set(versions)) == 200
    # the same rewrite of the same parent proposed again (a round replayed after its worker died) is the same
    # version; another parent or critique is a new one
    again = shared.propose(child, "text 2.7", "c")
    assert again == next(p for p in proposals if p.text == "text 2.7")
    assert shared.propose(child, "text 2.7", "other critique").version == max(versions) + 1
    assert shared.propose(rival_b, "text 2.7", "c").version == max(versions) + 2


def test_tool_call_targets_and_evidence_shape() -> None:
    call = ToolCall("reference_answer", 1, {"candidate": "4", "gold": "4"},
                    Evidence.model_validate(ReferenceAnswerTool().invoke({"candidate": "4", "gold": "4"})))
    assert call.evidence.verdict is True
    assert call.evidence.data == {"check": "final answer", "expected": "4", "claimed": "4", "form": "final line"}


class CountingBackend(CannedBackend):
    """CannedBackend that counts the requests it is asked (how many judge or reward calls a round spends)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.requests = 0

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        self.requests += len(requests)
        return super()._generate_batch(requests)


OPINION = json.dumps({"candidate_1": {"rationale": "fine", "score": 7}, "candidate_2": {"rationale": "ok", "score": 6}})
DECIDING = GameSettings(candidates=2, max_rounds=2, accept_threshold=8, seed=7, verdicts_decide=True)


def _real_judge_and_reward(verdicts_decide: bool = True):
    from agents.players import RewardModel

    judge_engine, reward_engine = CountingBackend(OPINION), CountingBackend('{"analysis": "good", "score": 9}')
    judge = Judge(judge_engine, "judge", {"reference_answer": ReferenceAnswerTool()}, verdicts_decide=verdicts_decide)
    return judge, RewardModel(reward_engine, "reward"), judge_engine, reward_engine


def test_a_verified_pair_is_accepted_without_judge_scores_or_a_reward_call() -> None:
    from agents.players import VERDICTS_DECIDE_METHOD

    judge, reward, judge_engine, reward_engine = _real_judge_and_reward()
    target = ScriptedTarget([["The answer is 5.", "2 + 2 = 4"]])
    episode = play_episode(PROMPT, players(target, judge, reward), book(), DECIDING)
    (round_,) = episode.rounds
    assert episode.status == "accepted" and round_.accepted_by == "verified"
    assert (round_.chosen_index, round_.rejected_index, round_.reward) == (1, 0, None)
    assert round_.ranking.method == VERDICTS_DECIDE_METHOD and round_.ranking.raw is None
    assert judge_engine.requests == 0 and reward_engine.requests == 0, "verdicts decided: no model was asked"


def test_all_wrong_is_a_tie_that_spends_no_tokens_and_all_right_asks_the_judge() -> None:
    judge, reward, judge_engine, reward_engine = _real_judge_and_reward()
    wrong = ScriptedTarget([["5", "six"], ["4", "four is 4"]])
    spent: list[tuple[int, int]] = []
    episode = play_episode(PROMPT, players(wrong, judge, reward), book(), DECIDING,
                           on_round=lambda *_: spent.append((judge_engine.requests, reward_engine.requests)))
    assert [r.outcome for r in episode.rounds] == ["tie", "accepted"]
    assert spent[0] == (0, 0), "round 1: every candidate wrong, nothing to ask a model"
    assert episode.rounds[1].accepted_by == "reward", "both right: the judge and the reward model decide"
    assert spent[1] == (1, 1)


def test_with_verdicts_not_deciding_every_pair_is_judged_and_graded() -> None:
    judge, reward, judge_engine, reward_engine = _real_judge_and_reward(verdicts_decide=False)
    target = ScriptedTarget([["The answer is 5.", "2 + 2 = 4"]])
    settings = GameSettings(candidates=2, max_rounds=2, accept_threshold=8, seed=7, verdicts_decide=False)
    episode = play_episode(PROMPT, players(target, judge, reward), book(), settings)
    assert episode.rounds[0].accepted_by == "reward" and episode.rounds[0].reward.score == 9
    assert judge_engine.requests == 1 and reward_engine.requests == 1



@dataclass
class VerdictsOnlyJudge:
    """A judge whose model answer never parsed, ranking on what tools said: round r's verdicts are `verdicts[r]`
    (None where no tool could check a candidate)."""

    verdicts: list[list[bool | None]]
    model_id: str = "verdicts-only"
    rounds: int = 0

    def choose_tools(self, prompt):
        return []

    def investigate(self, prompt, candidates, tool_names):
        return []

    def rank(self, prompt, candidates, calls, system_prompt):
        verdicts = self.verdicts[self.rounds]
        self.rounds += 1
        scored = [ScoredCandidate(i, None, "", v, 0.0 if v is None else (10.0 if v else -10.0))
                  for i, v in enumerate(verdicts)]
        return Ranking(scored, "tool verdicts only (judge answer unparseable: no JSON)")


def test_a_chosen_answer_without_verdict_or_judge_score_is_never_accepted_on_a_reward_grade() -> None:
    """Round 1: the judge's answer did not parse, no tool could check the first answer, the second is wrong.
    The reward model would grade the pair 9, but a grade alone accepts nothing and is not even asked. Round 2:
    the chosen answer is verified right, so the grade may decide (verdicts not deciding here)."""
    reward = ScriptedReward([9, 9])
    target = ScriptedTarget([["about four", "5"], ["4", "5"]])
    settings = GameSettings(candidates=2, max_rounds=2, accept_threshold=8, seed=7, verdicts_decide=False)
    judge = VerdictsOnlyJudge([[None, False], [True, False]])
    episode = play_episode(PROMPT, players(target, judge, reward), book(), settings)
    first, second = episode.rounds
    assert first.outcome == "tie" and "no tool verdict and no judge score" in first.failure_reason
    assert first.reward is None and first.chosen_index is None
    assert second.outcome == "accepted" and second.accepted_by == "reward"
    assert reward.calls == 1, "only the second round was graded"


def _quickstart_judge() -> Judge:
    """The judge the quickstart plays with: its tools as configured, a model answer that never decides."""
    from configs import load_config
    from tools.registry import build_tools

    return Judge(CannedBackend(OPINION), "canned", build_tools(load_config("quickstart").tools), verdicts_decide=True)


def _demo_prompt() -> EpisodePrompt:
    """Mia's stickers as the quickstart played it then (built-in arithmetic, seed 0, before it asked for the final
    form): 68 - 8 * 6 = 20."""
    from storage.records import PromptRecord

    text = ("Mia has 68 stickers. She gives 8 to each of her 6 friends. How many stickers does she have left? "
            "Give the final answer as a number.")
    meta = {"answer": 20, "expression": "68 - 8 * 6", "answer_kind": "numeric", "task": "arithmetic"}
    record = PromptRecord(messages=[{"role": "user", "content": text}], source="builtin:arithmetic", meta=meta)
    return EpisodePrompt(record.id, record.messages, record.meta)


# The chosen answer of a pair `make demo` reported verified, as the target produced it: cut off at max_tokens, two
# false steps, committed to 2. Both tools then read "the number after the last '='" (20, right).
DEMO_CHOSEN = Candidate(
    "If Mia gives 8 stickers to each of her 6 friends, she has 6 x 8 = 40 stickers left.\n"
    "She has 6 - 40 = 20 stickers left.\n"
    "#### 2",
    "smollm2-135m-instruct", finish_reason="length", completion_tokens=48,
)


def test_the_demo_pair_is_no_longer_verified() -> None:
    prompt, judge = _demo_prompt(), _quickstart_judge()
    assert prompt.meta["answer"] == 20
    wrong = Candidate("She has 68 - 8 = 60 stickers left. The answer is 60.", "m", finish_reason="stop")
    calls = judge.investigate(prompt, [DEMO_CHOSEN, wrong], judge.choose_tools(prompt))
    failed = {c.evidence.data["check"]: c.evidence.summary for c in calls if c.candidate == 0}
    assert failed == {
        "finished": "did not finish (cut off at max_tokens)",
        "final answer": "final answer 2 (explicit) does not match the reference (20)",
        "steps": "2 of 2 arithmetic statements false: 6 x 8 = 40 (sides: 48, 40); 6 - 40 = 20 (sides: -34, 20)",
    }
    assert all(c.evidence.verdict is False for c in calls if c.candidate == 0)
    ranking = judge.rank(prompt, [DEMO_CHOSEN, wrong], calls, "be strict")
    assert [s.verified for s in ranking.scored] == [False, False]
    episode = play_episode(prompt, players(ScriptedTarget([[DEMO_CHOSEN, wrong]] * 2), judge, ScriptedReward([])),
                           book(), DECIDING)
    assert [r.outcome for r in episode.rounds] == ["tie", "tie"], "two wrong answers make no pair"


def test_a_truncated_correct_looking_answer_loses_to_a_finished_one() -> None:
    prompt, judge = _demo_prompt(), _quickstart_judge()
    cut = Candidate("68 - 8 x 6 = 68 - 48 = 20. The answer is 20", "m", finish_reason="length")
    finished = Candidate("68 - 48 = 20. The answer is 20.", "m", finish_reason="stop")
    episode = play_episode(prompt, players(ScriptedTarget([[cut, finished]]), judge, ScriptedReward([])), book(),
                           DECIDING)
    (round_,) = episode.rounds
    assert (round_.outcome, round_.accepted_by) == ("accepted", "verified")
    assert (round_.chosen_index, round_.rejected_index) == (1, 0)
    cut_checks = {c.tool: c.evidence.verdict for c in round_.tool_calls if c.candidate == 0}
    assert cut_checks == {"finished": False, "reference_answer": True, "calculator": True}, "only its end is wrong"
    # a task that allows unfinished answers: both pass, and the judge model tells them apart
    lenient = EpisodePrompt(prompt.id, prompt.messages, prompt.meta | {"allow_unfinished": True})
    calls = judge.investigate(lenient, [cut, finished], judge.choose_tools(lenient))
    assert [s.verified for s in judge.rank(lenient, [cut, finished], calls, "x").scored] == [True, True]


def test_a_candidate_is_verified_only_by_its_answer_never_by_finishing_or_true_steps_alone() -> None:
    judge = _quickstart_judge()
    no_gold = EpisodePrompt("n" * 64, [{"role": "user", "content": "Add 2 and 2."}], {"expression": "2 + 2"})
    two_answers = Candidate("2 + 2 = 4. The answer is 4.\nThe answer is 5.", "m", finish_reason="stop")
    false_step = Candidate("2 + 2 = 5 - 1 = 3. The answer is 4.", "m", finish_reason="stop")
    right = Candidate("2 + 2 = 4. The answer is 4.", "m", finish_reason="stop")
    candidates = [two_answers, false_step, right]
    calls = judge.investigate(no_gold, candidates, judge.choose_tools(no_gold))
    assert [s.verified for s in judge.rank(no_gold, candidates, calls, "x").scored] == [False, False, True]
    only_steps = Judge(CannedBackend(OPINION), "canned", {"calculator": judge.tools["calculator"]})
    also_right = Candidate("4 = 2 + 2, so it is 4", "m", finish_reason="stop")
    calls = only_steps.investigate(no_gold, [right, also_right], ["calculator"])
    assert {(c.tool, c.evidence.verdict) for c in calls} == {("finished", True), ("calculator", True)}
    ranking = only_steps.rank(no_gold, [right, also_right], calls, "x")
    assert [s.verified for s in ranking.scored] == [None, None], "finished with true steps, answer unchecked"
