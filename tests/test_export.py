"""Export: TRL conversational rows, manifest, versions, filters, overwrite refusal; read back by id or path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from configs.errors import ExportError, NotFoundError
from pipelines.export import content_hash, default_export_dir, export_run
from storage.db import session_scope
from storage.folders import folder_written_whole
from storage.migrate import open_database
from storage.models import Export, PreferencePair
from storage.preference_sets import load_preference_set
from storage.queries import pair_quality
from tests.sample_run import store_sample_run


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_export_formats_round_trip(sample_db, tmp_path: Path, fmt: str) -> None:
    engine, sample = sample_db
    result = export_run(engine, "sample", tmp_path / "out", fmt=fmt)
    assert result.num_pairs == sample.accepted == 5
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"pairs": 5, "prompts": 5}
    assert manifest["config_hash"] == "f" * 64 and manifest["run_id"] == "sample"
    assert manifest["models"]["target"] == ["smollm2-135m-instruct"]
    assert manifest["filters"] == {"accepted": True, "min_score": None}

    dataset = load_preference_set(tmp_path / "out")
    assert len(dataset) == 5
    row = dataset[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    assert row["score"] >= 8 and row["chosen_score"] == 9.0 and row["rejected_score"] == 2.0
    # The hash in the manifest is the hash of exactly what was read back.
    assert content_hash([dict(r) for r in dataset]) == manifest["content_hash"]


def test_versions_min_score_force_and_lookup_by_id(sample_db, tmp_path: Path, db_url: str) -> None:
    engine, _ = sample_db
    first = export_run(engine, "sample", tmp_path / "v1")
    strict = export_run(engine, "sample", tmp_path / "v2", min_score=9)
    assert (first.version, strict.version) == (1, 2)
    assert (first.id, strict.id) == ("sample@v1", "sample@v2")
    assert strict.num_pairs == 3  # episodes 0, 2, 4 were accepted with reward 9; 1 and 3 with 8
    assert first.content_hash != strict.content_hash

    with pytest.raises(ExportError, match="already exists and is not empty; pass --force"):
        export_run(engine, "sample", tmp_path / "v1")
    again = export_run(engine, "sample", tmp_path / "v1", force=True)
    assert again.version == 3 and again.content_hash == first.content_hash

    by_id = load_preference_set("sample@v2", db_url=db_url)
    assert len(by_id) == 3
    with session_scope(engine) as session:
        stored = session.execute(select(Export).order_by(Export.version)).scalars().all()
        assert [e.num_pairs for e in stored] == [5, 3, 5]


def test_unknown_run_writes_nothing(sample_db, tmp_path: Path) -> None:
    engine, _ = sample_db
    with pytest.raises(NotFoundError, match="no run named 'nope'"):
        export_run(engine, "nope", tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("prefsmith.db")] == []


def test_bad_export_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="is not a prefsmith export"):
        load_preference_set(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "jsonl", "data": "data.jsonl"}')
    (tmp_path / "data.jsonl").write_text('{"prompt": [], "chosen": [], "rejected": []}\n{"prompt": \n')
    with pytest.raises(ExportError, match=r"data.jsonl:2: invalid JSON"):
        load_preference_set(tmp_path)


def test_default_export_dir_never_reuses_a_written_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFSMITH_HOME", str(tmp_path))
    first = default_export_dir("run-x", 1)
    assert first == tmp_path / "exports" / "run-x-v1" and not first.exists()
    first.mkdir()
    assert default_export_dir("run-x", 1) == first, "an empty folder may be used"
    (first / "manifest.json").write_text("{}")
    second = default_export_dir("run-x", 1)
    assert second != first and second.name.startswith("run-x-v1-")


def test_export_without_destination_goes_under_home_by_version(
    sample_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = sample_db
    monkeypatch.setenv("PREFSMITH_HOME", str(tmp_path / "home"))
    first = export_run(engine, "sample")
    second = export_run(engine, "sample", fmt="jsonl")
    exports = tmp_path / "home" / "exports"
    assert (first.id, first.path) == ("sample@v1", exports / "sample-v1")
    assert (second.id, second.path) == ("sample@v2", exports / "sample-v2")
    assert len(load_preference_set(second.path)) == first.num_pairs == 5


def test_a_failed_write_leaves_the_old_folder_and_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "set"
    target.mkdir()
    (target / "old").write_text("1")
    with pytest.raises(RuntimeError, match="disk full"), folder_written_whole(target) as staging:
        (staging / "new").write_text("2")
        raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    assert [p.name for p in target.iterdir()] == ["old"]
    with folder_written_whole(target) as staging:
        (staging / "new").write_text("2")
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    assert [p.name for p in target.iterdir()] == ["new"]


def test_force_replaces_only_an_export_and_keeps_a_users_folder(sample_db, tmp_path: Path) -> None:
    engine, _ = sample_db
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="is not a prefsmith export"):
        export_run(engine, "sample", mine, force=True)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    (mine / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"manifest.json:1: invalid JSON"):
        export_run(engine, "sample", mine, force=True)
    with session_scope(engine) as session:
        assert session.execute(select(Export)).first() is None, "a refused export stores no row"

    first = export_run(engine, "sample", tmp_path / "set")
    again = export_run(engine, "sample", tmp_path / "set", force=True)
    assert again.version == first.version + 1 and len(load_preference_set(tmp_path / "set")) == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no staging left behind"


def test_concurrent_exports_get_distinct_versions(sample_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine, _ = sample_db
    monkeypatch.setenv("PREFSMITH_HOME", str(tmp_path / "home"))
    with ThreadPoolExecutor(4) as pool:
        named = list(pool.map(lambda i: export_run(engine, "sample", tmp_path / f"out{i}"), range(4)))
        default = list(pool.map(lambda _: export_run(engine, "sample"), range(4)))
    results = named + default
    assert sorted(r.version for r in results) == list(range(1, 9))
    assert len({r.path for r in results}) == 8
    for result in results:
        assert json.loads((result.path / "manifest.json").read_text())["version"] == result.version
    with session_scope(engine) as session:
        assert len(session.execute(select(Export)).all()) == 8


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "run name", "", "x" * 129, "/abs"])
def test_run_ids_that_are_not_one_folder_name_are_refused(name: str) -> None:
    from configs.errors import ConfigError
    from storage.folders import check_slug

    with pytest.raises(ConfigError, match="use letters, digits"):
        check_slug(name, "--run-name")
    with pytest.raises(ConfigError):
        default_export_dir(name, 1)
    assert check_slug("run-2026.12_a", "--run-name") == "run-2026.12_a"


def test_a_verified_pair_is_stored_and_exported_with_why_it_was_accepted(db_url: str, tmp_path: Path) -> None:
    from agents.game import EpisodePrompt
    from pipelines.episode import GameSettings, play_episode
    from pipelines.recording import store_episode
    from storage import records as rows
    from storage.records import PromptRecord
    from tests.test_episode import PROMPT, ScriptedTarget, _real_judge_and_reward, book, players

    prompt = EpisodePrompt(PromptRecord(PROMPT.messages).id, PROMPT.messages, PROMPT.meta)
    engine = open_database(db_url)
    with session_scope(engine) as session:
        rows.ensure_run(session, "verified", "v" * 64, {})
        rows.add_prompts(session, [PromptRecord(PROMPT.messages)])
        rows.ensure_episodes(session, "verified", [prompt.id])
    judge, reward, _, _ = _real_judge_and_reward()
    settings = GameSettings(candidates=2, max_rounds=1, accept_threshold=8, seed=7, verdicts_decide=True)
    episode = play_episode(prompt, players(ScriptedTarget([["5", "2 + 2 = 4"]]), judge, reward), book(), settings)
    store_episode(engine, "verified", episode, {"target": "t", "judge": "j", "reward": "r"})
    result = export_run(engine, "verified", tmp_path / "out", fmt="jsonl", min_score=9)
    engine.dispose()
    (row,) = load_preference_set(result.path)
    assert (row["accepted_by"], row["score"]) == ("verified", None), "min_score keeps pairs the reward did not grade"
    assert row["chosen"][0]["content"] == "2 + 2 = 4" and row["rejected"][0]["content"] == "5"


def test_finish_reasons_are_stored_exported_and_shown_on_the_pairs_page(db_url: str, tmp_path: Path) -> None:
    """The demo's cut-off answer (tests.test_episode.DEMO_CHOSEN) against a finished right one: the finished one is
    chosen, and the export and the UI say how each ended."""
    from fastapi.testclient import TestClient

    from agents.game import Candidate
    from pipelines.episode import play_episode
    from pipelines.recording import store_episode
    from storage import records as rows
    from storage.records import PromptRecord
    from tests.test_episode import (
        DECIDING,
        DEMO_CHOSEN,
        ScriptedReward,
        ScriptedTarget,
        _demo_prompt,
        _quickstart_judge,
        book,
        players,
    )
    from ui.app import UiSettings, create_app

    prompt = _demo_prompt()
    engine = open_database(db_url)
    with session_scope(engine) as session:
        rows.ensure_run(session, "demo", "d" * 64, {})
        rows.add_prompts(session, [PromptRecord(prompt.messages, meta=prompt.meta)])
        rows.ensure_episodes(session, "demo", [prompt.id])
    right = Candidate("68 - 48 = 20. The answer is 20.", "m", finish_reason="stop")
    target = ScriptedTarget([[DEMO_CHOSEN, right]])
    episode = play_episode(prompt, players(target, _quickstart_judge(), ScriptedReward([])), book(), DECIDING)
    store_episode(engine, "demo", episode, {"target": "t", "judge": "j", "reward": "r"})
    result = export_run(engine, "demo", tmp_path / "out", fmt="parquet")
    (row,) = load_preference_set(result.path)
    assert (row["accepted_by"], row["chosen_verified"], row["rejected_verified"]) == ("verified", True, False)
    assert (row["chosen_finish"], row["rejected_finish"]) == ("stop", "length")
    assert row["rejected"][0]["content"] == DEMO_CHOSEN.text
    assert {"chosen_finish", "rejected_finish"} <= set(result.manifest["columns"])
    with session_scope(engine) as session:
        (pair_id,) = session.execute(select(PreferencePair.id)).scalars().all()
    page = TestClient(create_app(UiSettings(engine)), base_url="http://127.0.0.1:8765").get(f"/pairs/{pair_id}")
    engine.dispose()
    assert 'id="chosen-finish">finished: stop<' in page.text
    assert 'id="rejected-finish">cut off at max_tokens<' in page.text
    assert "did not finish (cut off at max_tokens)" in page.text, "the finish check's evidence"


def test_rows_carry_verdicts_and_require_verified_keeps_only_correct_over_wrong(db_url: str, tmp_path: Path) -> None:
    from storage import records as rows
    from storage.vocabulary import EpisodeStatus
    from tests.sample_run import sample_prompt, sample_round

    engine = open_database(db_url)
    sample = store_sample_run(engine, "sample", n_prompts=6)  # every accepted pair: chosen passes, rejected fails
    extra = [sample_prompt(10), sample_prompt(11)]
    with session_scope(engine) as session:
        ids = rows.add_prompts(session, extra)
        rows.ensure_episodes(session, "sample", ids)
    unchecked = sample_round(10, 0, 9.0)  # accepted on the reward's grade; no tool verdicts at all
    unchecked = rows.RoundRecord(**{**unchecked.__dict__, "evidence": [], "judgments": [
        rows.JudgmentRecord(0, 9.0, "fine", "m"), rows.JudgmentRecord(1, 3.0, "meh", "m")]})
    wrong_over_right = sample_round(11, 0, 9.0)  # the judge preferred the answer its tools failed
    wrong_over_right = rows.RoundRecord(**{**wrong_over_right.__dict__, "pair": rows.PairRecord(
        1, 0, 9.0, 2.0, 9.0, "", True, "m", "m", "m", accepted_by="reward")})
    for prompt_id, record in zip(ids, (unchecked, wrong_over_right), strict=True):
        with session_scope(engine) as session:
            rows.store_round(session, "sample", prompt_id, record, final_status=EpisodeStatus.ACCEPTED)

    everything = export_run(engine, "sample", tmp_path / "all", fmt="jsonl")
    strict = export_run(engine, "sample", tmp_path / "strict", fmt="jsonl", require_verified=True)
    with session_scope(engine) as session:
        quality = pair_quality(session, "sample")
    engine.dispose()
    # the sample's rejected pairs are correct over wrong too: the reward model turned down what the tools passed
    assert quality == {
        "accepted": sample.accepted + 2,
        "correct_over_wrong": sample.accepted,
        "share": sample.accepted / (sample.accepted + 2),
        "reward_vs_verdicts": {"pairs": sample.pairs + 1, "agree": sample.accepted,
                               "rate": sample.accepted / (sample.pairs + 1)},
    }
    assert everything.num_pairs == sample.accepted + 2 and strict.num_pairs == sample.accepted
    verdicts = sorted([(r["chosen_verified"], r["rejected_verified"]) for r in load_preference_set(tmp_path / "all")],
                      key=str)
    assert verdicts == sorted([(True, False)] * sample.accepted + [(None, None), (False, True)], key=str)
    assert all((r["chosen_verified"], r["rejected_verified"]) == (True, False)
               for r in load_preference_set(tmp_path / "strict"))
    assert strict.manifest["filters"] == {"accepted": True, "min_score": None, "require_verified": True}


def test_pairs_about_occupations_carry_their_occupation_and_dimension(sample_db, tmp_path: Path) -> None:
    from storage import records as rows
    from storage.records import PromptRecord
    from storage.vocabulary import EpisodeStatus
    from tests.sample_run import sample_round

    engine, sample = sample_db
    plain = export_run(engine, "sample", tmp_path / "plain", fmt="parquet")
    assert "occupation" not in plain.manifest["columns"], "no occupation prompts: no such columns"
    nurses = PromptRecord(messages=[{"role": "user", "content": "What share of registered nurses are women?"}],
                          source="builtin:occupations",
                          meta={"occupation": "registered nurses", "dimension": "gender", "attribute": "women"})
    with session_scope(engine) as session:
        (prompt_id,) = rows.add_prompts(session, [nurses])
        rows.ensure_episodes(session, "sample", [prompt_id])
    with session_scope(engine) as session:
        rows.store_round(session, "sample", prompt_id, sample_round(0, 0, 9.0), final_status=EpisodeStatus.ACCEPTED)
    for fmt in ("parquet", "jsonl"):
        grounded = export_run(engine, "sample", tmp_path / f"grounded-{fmt}", fmt=fmt)
        assert {"occupation", "dimension"} <= set(grounded.manifest["columns"])
        data = load_preference_set(tmp_path / f"grounded-{fmt}")
        about = [(r["occupation"], r["dimension"]) for r in data]
        assert about.count(("registered nurses", "gender")) == 1
        assert about.count((None, None)) == sample.accepted, "the arithmetic pairs are about no occupation"
