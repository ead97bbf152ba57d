"""Verifiable instruction following: the instruction_checks tool against if-verifiable's reference scorer on
a fixture covering IFEval's 25 instruction types, the built-in `instructions` set (seeded, split, compatible
constraints), IFEval-format prompt files, refused specs, the UI's per-instruction verdicts and filter, and a
real SmolLM2 episode whose verdicts come from the tool.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from configs.loading import load_config
from configs.schema import PromptSourceConfig, ToolsConfig
from configs.splits import held_out
from pipelines.instruction_prompts import CONSTRAINED, INSTRUCTION_TYPES, conflicts, instruction_prompts
from pipelines.prompt_sources import load_prompts
from storage.browse import PairFilter, list_pairs
from storage.db import session_scope
from storage.migrate import open_database
from storage.records import (
    EvidenceRecord,
    JudgmentRecord,
    PairRecord,
    PromptRecord,
    RoundRecord,
    add_prompts,
    ensure_episodes,
    ensure_run,
    store_round,
)
from storage.vocabulary import Candidate, EpisodeStatus, RoundOutcome
from tools.base import PromptContext
from tools.instruction_checks import (
    CHECKERS,
    MAX_CANDIDATE_CHARS,
    InstructionChecksTool,
    InstructionSpecError,
    check_spec,
    describe,
)
from tools.registry import build_tools
from ui.app import UiSettings, create_app

FIXTURE = Path(__file__).parent / "data" / "instructions_fixture.jsonl"
PAIR_LINK = re.compile(r'<a href="/pairs/([0-9a-f]{64})">')


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def tool_evidence(tool: InstructionChecksTool, row: dict, response: str):
    context = PromptContext(text=row["prompt"], meta=row)
    return tool.evidence(tool.arguments_for(context, response))


@pytest.fixture(scope="module")
def tool() -> InstructionChecksTool:
    built = build_tools(ToolsConfig(enabled=["instruction_checks"]))["instruction_checks"]
    assert isinstance(built, InstructionChecksTool)
    return built


def test_verdicts_equal_the_reference_scorer_on_every_instruction_type(tool) -> None:
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    rows = fixture_rows()
    outcomes: dict[str, set[bool]] = {kind: set() for kind in INSTRUCTION_TYPES}
    loose_only = 0
    for row in rows:
        evidence = tool_evidence(tool, row, row["response"])
        assert evidence.ok, (row["key"], evidence.error)
        results, scores = evaluate_instructions(
            row["response"], row["instruction_id_list"], row["kwargs"], row["prompt"], INSTRUCTION_DICT
        )
        ours = evidence.data["instructions"]
        assert [r["id"] for r in ours] == row["instruction_id_list"]
        if results:  # the reference gives no per-instruction result for an empty answer (and scores it 0)
            assert [(r["strict"], r["loose"]) for r in ours] == [(r.strict_pass, r.loose_pass) for r in results], row
        else:
            assert not any(r["strict"] or r["loose"] for r in ours)
        assert evidence.verdict == bool(scores.binary_strict), row["key"]
        for r in ours:
            outcomes[r["id"]].add(r["strict"])
            loose_only += r["loose"] and not r["strict"]
    # every type is both passed and failed somewhere, so a checker wired wrongly shows
    assert {kind: sorted(seen) for kind, seen in outcomes.items()} == {kind: [False, True] for kind in outcomes}
    assert loose_only >= 3  # the fixture has answers only IFEval's loose reading accepts


def test_language_checks_are_deterministic(tool) -> None:
    row = next(r for r in fixture_rows() if r["instruction_id_list"] == ["language:response_language"])
    short = "Sí. Bueno, no sé."  # a text langdetect is unsure about: its seed decides
    verdicts = {tool_evidence(tool, row, short).verdict for _ in range(5)}
    assert len(verdicts) == 1


def test_sentence_counts_need_no_nltk_download(tool) -> None:
    row = {"prompt": "p", "instruction_id_list": ["length_constraints:number_sentences"],
           "kwargs": [{"num_sentences": 3, "relation": "at least"}]}
    assert tool_evidence(tool, row, "One. Two! Three?").verdict is True
    assert tool_evidence(tool, row, "One. Two").verdict is False
    caps = {"prompt": "p", "instruction_id_list": ["change_case:capital_word_frequency"],
            "kwargs": [{"capital_frequency": 2, "capital_relation": "at least"}]}
    assert tool_evidence(tool, caps, "Go NOW. It is URGENT.").verdict is True


def test_the_tool_applies_only_to_prompts_with_instructions_and_caps_the_candidate(tool) -> None:
    assert tool.arguments_for(PromptContext(text="What is 2 + 2?", meta={"answer": 4}), "4") is None
    row = {"prompt": "p", "key": 7, "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    long = tool_evidence(tool, row, "a" * (MAX_CANDIDATE_CHARS + 1))
    assert not long.ok and long.verdict is None and f"{MAX_CANDIDATE_CHARS:,}" in long.error
    bad = tool_evidence(tool, {**row, "instruction_id_list": ["punctuation:no_commas"]}, "text")
    assert not bad.ok and "InstructionSpecError" in bad.error and "prompt 7" in bad.error


def test_ifbench_ids_are_checked_offline(tool) -> None:
    import nltk

    download = nltk.download
    row = {"prompt": "p", "instruction_id_list": ["format:title_case", "ratio:stop_words"],
           "kwargs": [{}, {"percentage": 30}]}
    evidence = tool_evidence(tool, row, "Rivers Run To The Sea")
    assert nltk.download is download  # refused only while IFBench's module imports
    title, stop_words = evidence.data["instructions"]
    assert title["strict"] is True and "error" not in title
    assert "stopwords" in stop_words["error"] and evidence.verdict is None  # no verdict without its data
    failed = tool_evidence(tool, row, "rivers run to the sea")
    assert failed.verdict is False  # a check that ran and failed decides


@pytest.mark.parametrize(
    ("ids", "kwargs", "named"),
    [
        (["punctuation:no_commas"], [{}], "unknown instruction id"),
        (["length_constraints:number_words"], [{"num_words": 30}], "lack relation"),
        (["length_constraints:number_words"], [{"num_words": 30, "relation": "about"}], "bad kwargs"),
        (["length_constraints:number_words"], [{"num_words": "30", "relation": "at least"}], "whole number"),
        (["punctuation:no_comma"], [{"letter": "a"}], "unknown kwargs letter"),
        (["punctuation:no_comma", "detectable_format:title"], [{}], "2 instructions but 1 kwargs"),
        ([], [], "non-empty list"),
        ("punctuation:no_comma", [{}], "non-empty list"),
    ],
)
def test_malformed_specs_are_refused_naming_the_file_and_line(tmp_path: Path, ids, kwargs, named: str) -> None:
    good = {"key": 1, "prompt": "Write a word.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    path = tmp_path / "prompts.jsonl"
    bad = {"key": 2, "prompt": "Write two words.", "instruction_id_list": ids, "kwargs": kwargs}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InstructionSpecError, match=re.escape(f"{path}:2")) as raised:
        load_prompts([PromptSourceConfig(path=str(path))])
    assert named in str(raised.value)


def test_an_ifeval_format_file_is_a_prompt_source(tmp_path: Path) -> None:
    rows = fixture_rows()
    records = load_prompts([PromptSourceConfig(path=str(FIXTURE))])
    assert len(records) == len({r["prompt"] for r in rows})  # the same prompt with other answers is one prompt
    first = records[0]
    assert first.meta["instruction_id_list"] == rows[0]["instruction_id_list"]
    several = next(r for r in records if len(r.meta["instruction_id_list"]) == 3)
    assert {"num_words": 20, "relation": "less than"} in several.meta["kwargs"]  # IFEval's None fields dropped
    assert not any(None in k.values() for r in records for k in r.meta["kwargs"])
    # a CSV file holds the lists as JSON text
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('prompt,instruction_id_list,kwargs\n"Say hi.","[""punctuation:no_comma""]","[{}]"\n')
    (record,) = load_prompts([PromptSourceConfig(path=str(csv_path))])
    assert record.meta["instruction_id_list"] == ["punctuation:no_comma"]


def test_the_builtin_set_is_seeded_split_and_compatible() -> None:
    first, again = instruction_prompts(60, seed=3), instruction_prompts(60, seed=3)
    assert first == again and first != instruction_prompts(60, seed=4)
    train = instruction_prompts(200, seed=0, split="train")
    heldout = instruction_prompts(50, seed=0, split="heldout")
    assert not any(held_out(r["prompt"]) for r in train) and all(held_out(r["prompt"]) for r in heldout)
    everything = instruction_prompts(400, seed=0, split="all")
    assert 0.12 < sum(held_out(r["prompt"]) for r in everything) / len(everything) < 0.28
    table = conflicts()
    seen: set[str] = set()
    for row in everything:
        kinds = row["instruction_id_list"]
        assert 1 <= len(kinds) <= 3 and len(set(kinds)) == len(kinds)
        assert all(b not in table[a] for i, a in enumerate(kinds) for b in kinds[i + 1:]), kinds
        if CONSTRAINED in kinds:
            assert kinds == [CONSTRAINED] and row["prompt"].rstrip().endswith("'My answer is maybe.')")
        for kind, parameters in zip(kinds, row["kwargs"], strict=True):
            assert describe(kind, parameters) in row["prompt"]
        check_spec(kinds, row["kwargs"], "test", row["prompt"])
        seen.update(kinds)
    assert seen == set(INSTRUCTION_TYPES) and len(INSTRUCTION_TYPES) == 25
    assert set(INSTRUCTION_TYPES) == set(CHECKERS.ifeval())


def test_configs_playing_instructions_judge_with_the_tool() -> None:
    preset = load_config("instructions", [])
    assert preset.tools.enabled == ["instruction_checks"] and preset.game.verdicts_decide
    mixed = load_config("quickstart", ["prompts=[{builtin: instructions, limit: 3}]"])
    assert mixed.tools.enabled == ["reference_answer", "calculator", "instruction_checks"]
    assert load_config("quickstart", []).tools.enabled == ["reference_answer", "calculator"]
    (record, *_) = load_prompts(preset.prompts)
    assert record.meta["task"] == "instructions" and record.meta["instruction_id_list"]


def _store_instruction_run(engine, tool: InstructionChecksTool) -> dict[str, list[str]]:
    """Three instruction prompts, one round each, candidates checked by the tool: which pairs carry which
    instruction."""
    plans = [
        ("Describe owls without commas.", ["punctuation:no_comma"], [{}],
         "Owls hunt at night", "Owls, which hunt at night, are quiet"),
        ("Give a title to a poem about rain.", ["detectable_format:title", "punctuation:no_comma"], [{}, {}],
         "<<Rain>>\nRain falls", "Rain falls, softly"),
        ("Describe tea in lowercase.", ["change_case:english_lowercase"], [{}],
         "tea is a warm drink made from leaves.", "Tea is a warm drink made from leaves."),
    ]
    prompts = [PromptRecord(messages=[{"role": "user", "content": text}], source="test:instructions",
                            meta={"instruction_id_list": ids, "kwargs": kwargs}) for text, ids, kwargs, *_ in plans]
    with session_scope(engine) as session:
        ensure_run(session, "instr", "a" * 64, {})
        prompt_ids = add_prompts(session, prompts)
        ensure_episodes(session, "instr", prompt_ids)
    carried: dict[str, list[str]] = {}
    for prompt, prompt_id, (_, ids, _, good, bad) in zip(prompts, prompt_ids, plans, strict=True):
        context = PromptContext(text=prompt.messages[0]["content"], meta=prompt.meta)
        calls = [tool.evidence(tool.arguments_for(context, text)) for text in (good, bad)]
        assert [c.verdict for c in calls] == [True, False]
        record = RoundRecord(
            index=0, target_prompt_version=0, judge_prompt_version=0, outcome=RoundOutcome.ACCEPTED,
            candidates=[Candidate(text=t, model_id="m", finish_reason="stop", completion_tokens=5)
                        for t in (good, bad)],
            judgments=[JudgmentRecord(i, None, "", "m", verified=c.verdict) for i, c in enumerate(calls)],
            evidence=[EvidenceRecord("instruction_checks", tool.arguments_for(context, t),
                                     c.data | {"summary": c.summary}, generation_index=i, verdict=c.verdict)
                      for i, (t, c) in enumerate(zip((good, bad), calls, strict=True))],
            pair=PairRecord(0, 1, None, None, None, "", True, "m", "m", "m", accepted_by="verified"),
        )
        with session_scope(engine) as session:
            store_round(session, "instr", prompt_id, record, final_status=EpisodeStatus.ACCEPTED)
        for kind in ids:
            carried.setdefault(kind, []).append(prompt_id)
    return carried


def test_the_ui_shows_each_instructions_verdict_and_filters_by_type(db_url: str, tool) -> None:
    engine = open_database(db_url)
    try:
        carried = _store_instruction_run(engine, tool)
        ui = TestClient(create_app(UiSettings(engine)), base_url="http://127.0.0.1:8765")
        listing = ui.get("/pairs?run=instr").text
        assert len(PAIR_LINK.findall(listing)) == 3
        for kind in carried:
            assert f'<option value="{kind}"' in listing
        for kind, prompt_ids in carried.items():
            shown = PAIR_LINK.findall(ui.get(f"/pairs?run=instr&instruction={kind}").text)
            assert len(shown) == len(prompt_ids), kind
            with session_scope(engine) as session:
                rows, _ = list_pairs(session, PairFilter(run="instr", instruction=kind))
            assert sorted(r["prompt_id"] for r in rows) == sorted(prompt_ids)
        assert PAIR_LINK.findall(ui.get("/pairs?instruction=startend:quotation").text) == []
        refused = ui.get("/pairs?instruction=%25%27%20or%201=1")
        assert refused.status_code == 200 and 'class="error"' in refused.text

        (titled,) = PAIR_LINK.findall(ui.get("/pairs?run=instr&instruction=detectable_format:title").text)
        page = ui.get(f"/pairs/{titled}").text
        table = page[page.index('id="instructions"'):page.index("</table>", page.index('id="instructions"'))]
        rows_html = table.split('<tr class="instruction">')[1:]
        assert [re.search(r"<code>([^<]+)</code>", r).group(1) for r in rows_html] == [
            "detectable_format:title", "punctuation:no_comma"]
        # title: chosen passes, rejected fails; no comma: both strict verdicts shown per side
        for row_html in rows_html:
            chosen = row_html.split('<td class="chosen">')[1].split("</td>")[0]
            rejected = row_html.split('<td class="rejected">')[1].split("</td>")[0]
            assert 'class="tag pass">pass' in chosen and 'class="tag fail">fail' in rejected
    finally:
        engine.dispose()


@pytest.mark.model
def test_a_smollm2_episode_on_instruction_prompts_stores_the_tools_verdicts(
    small_model_path: Path, tmp_path: Path
) -> None:
    from agents.game import EpisodePrompt
    from pipelines.episode import play_episode
    from pipelines.game_setup import build_players, game_settings, model_ids, new_prompt_book, open_backends
    from pipelines.recording import store_episode
    from storage.models import Judgment, Round, ToolEvidence

    config = load_config("instructions", ["game.candidates=3", "game.max_rounds=1", "sampling.max_tokens=48"])
    backends = open_backends(config)
    try:
        players = build_players(config, backends)
        prompts = load_prompts([PromptSourceConfig(builtin="instructions", limit=2, seed=1)])
        episodes = [play_episode(EpisodePrompt(p.id, p.messages, p.meta), players, new_prompt_book(),
                                 game_settings(config)) for p in prompts]
    finally:
        for backend in backends.values():
            backend.close()
    engine = open_database(f"sqlite:///{tmp_path / 'i.db'}", migrate=True)
    try:
        with session_scope(engine) as session:
            ensure_run(session, "smol", "b" * 64, {})
            ensure_episodes(session, "smol", add_prompts(session, prompts))
        for episode in episodes:
            store_episode(engine, "smol", episode, model_ids(config))
        with session_scope(engine) as session:
            rounds = session.execute(select(Round)).scalars().all()
            evidence = session.execute(select(ToolEvidence)).scalars().all()
            judgments = session.execute(select(Judgment)).scalars()
            verified = {(j.round_id, j.generation_index): j.verified for j in judgments}
            played = len([r for r in rounds if r.outcome != RoundOutcome.FAILED])
            # every candidate gets the judge's finish check and the configured instruction_checks, nothing else
            finished = {(e.round_id, e.generation_index): e.verdict for e in evidence if e.tool == "finished"}
            checks = [e for e in evidence if e.tool == "instruction_checks"]
            assert rounds and len(checks) == len(finished) == 3 * played and len(evidence) == 6 * played
            for e in checks:
                assert e.error is None and e.verdict is not None
                assert len(e.result["instructions"]) == len(e.arguments["instruction_id_list"])
                assert e.verdict == all(r["strict"] for r in e.result["instructions"])
                # a cut-off answer fails whatever its instructions say; a finished one is what they say
                key = (e.round_id, e.generation_index)
                assert verified[key] == (e.verdict if finished[key] else False)
    finally:
        engine.dispose()
