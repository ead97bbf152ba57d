"""A pair-quality audit (`prefsmith runs audit`): a run's accepted pairs re-checked with today's verifiers, the
tools the judge would run on each prompt, built from the run's own tool settings; which pairs would still be
verified (chosen passes, rejected fails), and for those that would not, the check that says so now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import Engine

from agents.game import EpisodePrompt
from configs.errors import ConfigError
from configs.loading import format_validation_error
from configs.schema import ToolsConfig
from storage.db import session_scope
from storage.models import Prompt
from storage.queries import accepted_pairs, get_run
from storage.records import update_run
from tools.base import JudgeTool
from tools.registry import build_tools

Status = Literal["verified", "not_verified", "no_verdict"]


@dataclass(frozen=True)
class Check:
    """One tool's verdict on one answer of a pair, today."""

    tool: str
    side: Literal["chosen", "rejected"]
    verdict: bool | None
    summary: str


@dataclass(frozen=True)
class PairAudit:
    """One accepted pair re-checked: the verdicts stored with it and today's, its status, and why when it is not
    verified now (`problems`: the checks that fail, in words)."""

    pair_id: str
    prompt: str
    stored_chosen: bool | None
    stored_rejected: bool | None
    chosen: bool | None
    rejected: bool | None
    status: Status
    problems: list[str]
    checks: list[Check]


@dataclass(frozen=True)
class AuditReport:
    run_id: str
    tools: list[str]
    pairs: int
    verified: int  # chosen passes today's checks and rejected fails them
    not_verified: int  # some check fails now: the chosen answer fails, or the rejected one passes
    no_verdict: int  # no tool gives a verdict on these prompts' answers
    stored_verified: int  # accepted pairs whose stored verdicts said chosen passes, rejected fails
    audited_at: str
    pair_audits: list[PairAudit] = field(default_factory=list)

    @property
    def failing(self) -> list[PairAudit]:
        return [audit for audit in self.pair_audits if audit.status == "not_verified"]

    def as_dict(self) -> dict[str, Any]:
        """The whole report, every pair that is not verified now listed with its checks."""
        summary = asdict(self)
        summary["pair_audits"] = [asdict(audit) for audit in self.pair_audits if audit.status != "verified"]
        return summary

    def summary(self) -> dict[str, Any]:
        """What `--record` keeps in the run's metrics: the counts and the ids of the pairs not verified now."""
        return {
            "audited_at": self.audited_at, "tools": self.tools, "pairs": self.pairs, "verified": self.verified,
            "not_verified": self.not_verified, "no_verdict": self.no_verdict,
            "not_verified_pairs": [audit.pair_id for audit in self.failing],
        }


def run_tools(config: Mapping[str, Any] | None, names: Sequence[str] | None = None) -> dict[str, JudgeTool]:
    """Today's tools for a run, from the tool settings its stored config has (`names`: these tools instead of
    the ones it enabled). A tool that cannot be built here (no sandbox isolation, a missing table) is a
    ConfigError, as it would be for a new run."""
    try:
        settings = ToolsConfig.model_validate(dict((config or {}).get("tools") or {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error("the run's stored tools settings", exc)) from None
    return build_tools(settings, list(names) if names else None)


def _combined(checks: list[Check], side: str) -> bool | None:
    """One answer's verdict over the tools, as the judge reads it: failed if any fails, passed if one passes."""
    verdicts = [check.verdict for check in checks if check.side == side and check.verdict is not None]
    return None if not verdicts else all(verdicts)


def audit_pair(row: dict[str, Any], meta: dict[str, Any], tools: Mapping[str, JudgeTool]) -> PairAudit:
    """Re-check one accepted pair (a row of `storage.queries.accepted_pairs`) with every tool that applies to
    its prompt and looks at answers (the judge's choice under `tools.selection: configured`)."""
    prompt = EpisodePrompt(row["prompt_id"], row["messages"], meta)
    context = prompt.context()
    checks: list[Check] = []
    problems: list[str] = []
    for name, tool in tools.items():
        if not tool.per_candidate or tool.arguments_for(context, "") is None:
            continue  # it does not apply here, or it looks only at the input and judges no answer
        for side in ("chosen", "rejected"):
            arguments = tool.arguments_for(context, row[side])
            if arguments is None:
                continue
            evidence = tool.evidence(arguments)
            said = evidence.summary if evidence.ok else f"{name} could not check the {side} answer: {evidence.error}"
            if not evidence.ok:
                problems.append(said)
            checks.append(Check(name, side, evidence.verdict, said))
    chosen, rejected = _combined(checks, "chosen"), _combined(checks, "rejected")
    for check in checks:
        if check.side == "chosen" and check.verdict is False:
            problems.append(f"chosen answer fails {check.tool}: {check.summary}")
    if chosen is True and rejected is True:
        passed = ", ".join(dict.fromkeys(c.tool for c in checks if c.side == "rejected" and c.verdict))
        problems.append(f"rejected answer passes {passed} too: no contrast")
    elif chosen is True and rejected is None:
        problems.append("rejected answer gets no verdict: no contrast to verify")
    status: Status = (
        "no_verdict" if chosen is None else "verified" if chosen and rejected is False else "not_verified"
    )
    return PairAudit(
        row["pair_id"], prompt.text, row["chosen_verified"], row["rejected_verified"], chosen, rejected, status,
        problems if status != "verified" else [], checks,
    )


def audit_run(
    engine: Engine, run_id: str, *, tool_names: Sequence[str] | None = None, workers: int = 8, record: bool = False
) -> AuditReport:
    """Re-check run `run_id`'s accepted pairs (as stored: people's reviews are not applied), `workers` pairs at a
    time. Reads only, unless `record`: then the summary is kept in the run's metrics under `audit`."""
    with session_scope(engine) as session:
        config = get_run(session, run_id).config  # NotFoundError for an unknown run
        rows = accepted_pairs(session, run_id)
        metas = {}
        for prompt_id in {row["prompt_id"] for row in rows}:
            prompt = session.get(Prompt, prompt_id)
            metas[prompt_id] = dict(prompt.meta or {}) if prompt is not None else {}
    tools = run_tools(config, tool_names)
    with ThreadPoolExecutor(max(1, workers)) as pool:  # a sandboxed check is its own process: they run side by side
        audits = list(pool.map(lambda row: audit_pair(row, metas[row["prompt_id"]], tools), rows))
    report = AuditReport(
        run_id=run_id,
        tools=list(tools),
        pairs=len(audits),
        verified=sum(a.status == "verified" for a in audits),
        not_verified=sum(a.status == "not_verified" for a in audits),
        no_verdict=sum(a.status == "no_verdict" for a in audits),
        stored_verified=sum(a.stored_chosen is True and a.stored_rejected is False for a in audits),
        audited_at=datetime.now(UTC).isoformat(timespec="seconds"),
        pair_audits=audits,
    )
    if record:
        with session_scope(engine) as session:
            run = get_run(session, run_id)
            update_run(session, run_id, metrics={**(run.metrics or {}), "audit": report.summary()})
    return report
