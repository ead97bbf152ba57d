"""The four Anyprefer players on top of a model backend: target, tool-using judge, pair reward model and
prompt optimizer. Each returns a value or a `PlayerFailure`; none raises for what a model says.

Prompt templates live in `agents/prompts/*.txt` (`$name` placeholders, so braces in answers are safe).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from string import Template

from langchain_core.utils.function_calling import convert_to_openai_tool

from agents.backends import Backend, ChatMessage, ChatRequest, ParseFailure, generate_structured
from agents.backends.protocol import AbandonCheck
from agents.game import (
    Candidate,
    EpisodePrompt,
    Graded,
    PlayerFailure,
    Ranking,
    ScoredCandidate,
    ToolCall,
    final_form_stops,
    steps_checked,
    verdict_of,
)
from agents.verdicts import PromptRewrite, RewardVerdict, ranking_schema, tool_choice_schema
from configs.schema import SamplingConfig
from tools.base import JudgeTool
from tools.finished import FinishedTool

VERIFIED_WEIGHT = 10.0
RANKING_METHOD = "tool verdicts first (verified pass +10, fail -10), then the judge's 1-10 score"
# The checks a verified candidate passes: it finished, its final answer is right, its steps are true; each tool's
# evidence names its check (`data["check"]`).
VERDICTS_DECIDE_METHOD = "tool verdicts decide (every candidate verified; the judge model was not asked)"


@cache
def template(name: str) -> Template:
    return Template(resources.files("agents").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8"))


def default_prompt(role: str) -> str:
    """The initial system prompt of `role` ('target' or 'judge'), version 0 of every run."""
    return template(f"{role}_system").template.strip()


def _messages(system: str, user: str) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=user)]


def _evidence_lines(calls: list[ToolCall]) -> str:
    lines = []
    for call in calls:
        who = "question" if call.candidate is None else f"candidate {call.candidate + 1}"
        status = call.evidence.summary if call.evidence.ok else f"tool failed: {call.evidence.error}"
        lines.append(f"- {call.tool} on {who}: {status}")
    return "\n".join(lines) or "(no tool evidence)"


def _structured_failure(role: str, failure: ParseFailure) -> PlayerFailure:
    return PlayerFailure(role=role, reason=failure.reason, raw=list(failure.raw))


@dataclass
class Target:
    """Samples C candidates for an input under the current target prompt."""

    backend: Backend
    model_id: str
    sampling: SamplingConfig
    stop_at_final_answer: bool = False  # end each candidate after its family's final form (game.stop_at_final_answer)
    abandon_false_steps: bool = False  # end a candidate at its first settled false step (game.abandon_false_steps)

    def sample(self, prompt: EpisodePrompt, system_prompt: str, n: int, seed: int) -> list[Candidate] | PlayerFailure:
        own_system = [m["content"] for m in prompt.messages if m["role"] == "system"]
        system = "\n\n".join([system_prompt, *own_system])
        messages = [ChatMessage(role="system", content=system)] + [
            ChatMessage(role=m["role"], content=m["content"]) for m in prompt.messages if m["role"] != "system"
        ]
        stops = final_form_stops(prompt) if self.stop_at_final_answer else []
        abandon: list[AbandonCheck] = ["false_step"] if self.abandon_false_steps and steps_checked(prompt) else []
        request = ChatRequest.from_sampling(
            messages, self.sampling, n=n, seed=seed, stop_patterns=stops, abandon_on=abandon
        )
        (result,) = self.backend.generate([request])
        if result.error is not None:
            return PlayerFailure("target", f"{type(result.error).__name__}: {result.error}")
        sampling = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": seed,
        }
        return [
            Candidate(
                text=c.text,
                model_id=self.model_id,
                finish_reason=c.finish_reason,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=c.completion_tokens,
                sampling=sampling,
            )
            for c in result.completions
        ]


@dataclass
class Judge:
    """Chooses tools, runs them on the input and every candidate, and ranks the candidates listwise. Every
    candidate also gets the finish check (tools.finished): one cut off at max_tokens fails."""

    backend: Backend
    model_id: str
    tools: dict[str, JudgeTool]
    select_with_model: bool = False
    parse_retries: int = 2
    tokens_per_candidate: int = 60
    verdicts_decide: bool = False
    finish_check: FinishedTool = field(default_factory=FinishedTool)

    def choose_tools(self, prompt: EpisodePrompt) -> list[str]:
        """The configured tools that apply to this input; with `select_with_model`, the subset the judge
        model picks from the tools' schemas (LangChain's OpenAI tool format), constrained to their names."""
        context = prompt.context()
        applicable = [
            name
            for name, tool in self.tools.items()
            if tool.arguments_for(context, None if not tool.per_candidate else "") is not None
        ]
        if not self.select_with_model or len(applicable) < 2:
            return applicable
        specs = "\n".join(json.dumps(convert_to_openai_tool(self.tools[name])["function"]) for name in applicable)
        user = template("tool_choice").substitute(question=prompt.text, tools=specs)
        schema = tool_choice_schema(tuple(applicable))
        request = ChatRequest(messages=[ChatMessage(role="user", content=user)], max_tokens=60, temperature=0.0)
        (answer,) = generate_structured(self.backend, [request], schema, retries=self.parse_retries)
        if isinstance(answer, ParseFailure):
            return applicable  # a judge that cannot choose uses every configured tool
        return list(dict.fromkeys(answer.value.model_dump()["tools"])) or applicable

    def investigate(self, prompt: EpisodePrompt, candidates: list[Candidate], tool_names: list[str]) -> list[ToolCall]:
        context = prompt.context()
        calls = []
        for position, candidate in enumerate(candidates):
            finish = self.finish_check.arguments_for_finish(context, candidate.finish_reason)
            calls.append(
                ToolCall(self.finish_check.name, position, finish, self.finish_check.evidence(finish), verifies=False)
            )
        for name in tool_names:
            tool = self.tools[name]
            targets: list[int | None] = list(range(len(candidates))) if tool.per_candidate else [None]
            for index in targets:
                arguments = tool.arguments_for(context, None if index is None else candidates[index].text)
                if arguments is not None:
                    calls.append(ToolCall(name, index, arguments, tool.evidence(arguments), verifies=tool.verifies))
        return calls

    def rank(
        self, prompt: EpisodePrompt, candidates: list[Candidate], calls: list[ToolCall], system_prompt: str
    ) -> Ranking | PlayerFailure:
        verified = [verdict_of(calls, i) for i in range(len(candidates))]
        if self.verdicts_decide and all(v is not None for v in verified) and not all(verified):
            # Scores from the judge model could not overturn a verdict: rank on the verdicts (all wrong is a
            # tie) and spend no tokens. When every candidate passes, the judge still tells them apart.
            scored = [ScoredCandidate(i, None, "", v, _bonus(v)) for i, v in enumerate(verified)]
            return Ranking(scored, VERDICTS_DECIDE_METHOD, attempts=0)
        listing = "\n\n".join(f"Candidate {i + 1}:\n{c.text.strip()}" for i, c in enumerate(candidates))
        user = template("judge_rank").substitute(
            question=prompt.text, candidates=listing, evidence=_evidence_lines(calls)
        )
        request = ChatRequest(
            messages=_messages(system_prompt, user),
            temperature=0.0,
            max_tokens=self.tokens_per_candidate * len(candidates) + 20,
        )
        (answer,) = generate_structured(
            self.backend, [request], ranking_schema(len(candidates)), retries=self.parse_retries
        )
        if isinstance(answer, ParseFailure):
            if all(v is None for v in verified):
                return _structured_failure("judge", answer)
            # The judge said nothing usable, but tools did: rank on verdicts alone and say so.
            scored = [ScoredCandidate(i, None, "", v, _bonus(v)) for i, v in enumerate(verified)]
            return Ranking(
                scored,
                f"tool verdicts only (judge answer unparseable: {answer.reason})",
                raw=answer.raw[-1] if answer.raw else None,
                attempts=answer.attempts,
            )
        scores = answer.value.model_dump()
        scored = []
        for i, v in enumerate(verified):
            entry = scores[f"candidate_{i + 1}"]
            scored.append(
                ScoredCandidate(i, float(entry["score"]), entry["rationale"], v, float(entry["score"]) + _bonus(v))
            )
        return Ranking(scored, RANKING_METHOD, raw=answer.raw, attempts=answer.attempts)


def _bonus(verified: bool | None) -> float:
    return 0.0 if verified is None else (VERIFIED_WEIGHT if verified else -VERIFIED_WEIGHT)


@dataclass
class RewardModel:
    """Grades the pair itself, 1–10, with an analysis the optimizer will read."""

    backend: Backend
    model_id: str
    parse_retries: int = 2
    max_tokens: int = 110

    def grade(
        self,
        prompt: EpisodePrompt,
        chosen: Candidate,
        rejected: Candidate,
        ranking: Ranking,
        chosen_index: int,
        rejected_index: int,
        calls: list[ToolCall],
    ) -> Graded[RewardVerdict] | PlayerFailure:
        scores = {s.index: s.judge_score for s in ranking.scored}
        relevant = [c for c in calls if c.candidate in (None, chosen_index, rejected_index)]
        user = template("reward_grade").substitute(
            question=prompt.text,
            chosen=chosen.text.strip(),
            rejected=rejected.text.strip(),
            chosen_score=scores[chosen_index],
            rejected_score=scores[rejected_index],
            evidence=_evidence_lines(relevant),
        )
        request = ChatRequest(
            messages=_messages(template("reward_system").template.strip(), user),
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        (answer,) = generate_structured(self.backend, [request], RewardVerdict, retries=self.parse_retries)
        if isinstance(answer, ParseFailure):
            return _structured_failure("reward", answer)
        return Graded(answer.value, answer.raw, answer.attempts)


@dataclass
class PromptOptimizer:
    """Rewrites both players' prompts from the reward model's critique and the judge's rationales."""

    backend: Backend
    model_id: str
    parse_retries: int = 2
    max_tokens: int = 300

    def rewrite(
        self,
        prompt: EpisodePrompt,
        candidates: list[Candidate],
        ranking: Ranking,
        chosen_index: int,
        rejected_index: int,
        reward: RewardVerdict,
        threshold: int,
        target_prompt: str,
        judge_prompt: str,
    ) -> Graded[PromptRewrite] | PlayerFailure:
        lines = [
            f"Candidate {s.index + 1} (judge {s.judge_score}, verified {s.verified}): "
            f"{candidates[s.index].text.strip()[:300]}\n  Rationale: {s.rationale}"
            for s in ranking.scored
        ]
        user = template("optimizer_step").substitute(
            question=prompt.text,
            target_prompt=target_prompt,
            judge_prompt=judge_prompt,
            ranking="\n".join(lines),
            chosen_index=chosen_index + 1,
            rejected_index=rejected_index + 1,
            reward_score=reward.score,
            threshold=threshold,
            reward_analysis=reward.analysis,
        )
        request = ChatRequest(
            messages=_messages(template("optimizer_system").template.strip(), user),
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        (answer,) = generate_structured(self.backend, [request], PromptRewrite, retries=self.parse_retries)
        if isinstance(answer, ParseFailure):
            return _structured_failure("optimizer", answer)
        return Graded(answer.value, answer.raw, answer.attempts)
