"""Hostile model output for the UI's tests: every text of a pair (prompt, candidates, rationales, raw judge
answers, tool evidence, reward analysis, prompt versions and their critiques) filled with markup that would
run script, load something, or hide what it says if it were rendered as HTML. Stored through the real write
API, so the pages read it exactly as they would read a run's.

A page shows these inertly when no dialog opens, no request leaves for another host, `window.__xss` stays
unset and the page's only script is the UI's own.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from storage.db import session_scope
from storage.models import PreferencePair
from storage.records import (
    EvidenceRecord,
    JudgmentRecord,
    PairRecord,
    PromptRecord,
    PromptVersionRecord,
    RoundRecord,
    add_prompts,
    ensure_episodes,
    ensure_run,
    store_prompt_versions,
    store_round,
)
from storage.vocabulary import AcceptedBy, Candidate, EpisodeStatus, RoundOutcome

MODEL = "smollm2-135m-instruct"
RUN = "hostile"

XSS = [
    "<script>window.__xss = 1; alert(1)</script>",
    '"><script>window.__xss = 2</script>',
    "<img src=x onerror=\"window.__xss = 3; alert('img')\">",
    "<svg onload=\"window.__xss = 4\"><circle r=10 /></svg>",
    '<a href="javascript:window.__xss = 5">click me</a>',
    "<iframe src=\"javascript:parent.__xss = 6\"></iframe>",
    "<body onload=alert(7)><style>*{display:none !important}</style>",
    "'; window.__xss = 8; //",
    "{{ 7*7 }} {% raw %}{{ config }}{% endraw %} ${7*7}",
    '<meta http-equiv="refresh" content="0;url=http://example.invalid/">',
    '<form action="http://example.invalid/steal"><button>go</button></form>',
    "<link rel=stylesheet href=http://example.invalid/x.css>",
    "</pre></td></tr></table><h1 id=injected>injected</h1>",
]
BIDI = "The answer is \u202e42\u202c but reads 24; \u2066isolated\u2069 and a zero\u200bwidth space"
HUGE_CHARS = 1_048_576
HUGE = ("The answer is 42. " + "<script>window.__xss = 9</script>" * 4) * (HUGE_CHARS // 150)


def hostile_text(i: int) -> str:
    return XSS[i % len(XSS)]


def store_hostile_run(engine: Engine, n_prompts: int = 4) -> tuple[list[str], str]:
    """A run whose every text is hostile; the first pair's chosen answer is about 1 MB. Returns the pair ids
    and the id of the pair with the 1 MB answer."""
    prompts = [
        PromptRecord(
            messages=[
                {"role": "system", "content": XSS[0]},
                {"role": "user", "content": f"What is {i} + {i}? {hostile_text(i + 3)} {BIDI}"},
            ],
            source=f"hostile:{XSS[2]}",
            meta={"answer": 2 * i},
        )
        for i in range(n_prompts)
    ]
    with session_scope(engine) as session:
        ensure_run(session, RUN, "e" * 64, {"note": XSS[1], "storage": {"url": "postgresql://u:hunter2@db/x"}})
        prompt_ids = add_prompts(session, prompts)
        ensure_episodes(session, RUN, prompt_ids)
        store_prompt_versions(
            session,
            RUN,
            [
                PromptVersionRecord("target", 0, XSS[3]),
                PromptVersionRecord("target", 1, XSS[4] + "\n" + BIDI, parent_version=0, critique=XSS[5]),
                PromptVersionRecord("judge", 0, XSS[6]),
            ],
        )
    for i, prompt_id in enumerate(prompt_ids):
        chosen = HUGE if i == 0 else f"{2 * i} {hostile_text(i)} {BIDI}"
        rejected = f"{2 * i + 1} {hostile_text(i + 1)}"
        record = RoundRecord(
            index=0,
            target_prompt_version=1,
            judge_prompt_version=0,
            outcome=RoundOutcome.ACCEPTED,
            candidates=[
                Candidate(text=chosen, model_id=MODEL, finish_reason=hostile_text(i + 2)[:32], completion_tokens=9),
                Candidate(text=rejected, model_id=MODEL, finish_reason="stop", completion_tokens=9),
            ],
            judgments=[
                JudgmentRecord(0, 9.0, hostile_text(i + 4), MODEL, verified=True, raw_output=hostile_text(i + 5)),
                JudgmentRecord(1, 1.0, hostile_text(i + 6), MODEL, verified=False, raw_output=XSS[7]),
            ],
            evidence=[
                EvidenceRecord(
                    "reference_answer", {"gold": XSS[8]}, {"said": XSS[9]}, generation_index=0, verdict=True
                ),
                EvidenceRecord("reference_answer", {"gold": XSS[10]}, {"said": XSS[11]}, generation_index=1,
                               verdict=False, error=XSS[12]),
                EvidenceRecord("calculator", {"expression": XSS[0]}, {"value": XSS[2]}),
            ],
            pair=PairRecord(0, 1, 9.0, 1.0, None, hostile_text(i + 7), True, MODEL, MODEL, MODEL,
                            accepted_by=AcceptedBy.VERIFIED),
            details={"ranking": XSS[1], "raw": BIDI},
        )
        with session_scope(engine) as session:
            store_round(session, RUN, prompt_id, record, final_status=EpisodeStatus.ACCEPTED)
    with session_scope(engine) as session:
        rows = session.execute(
            select(PreferencePair.id, func.length(PreferencePair.chosen)).where(PreferencePair.run_id == RUN)
        ).all()
    return [r[0] for r in rows], max(rows, key=lambda r: r[1])[0]
