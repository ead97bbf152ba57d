"""Config loading: presets, `--set` overrides, one-line errors naming file/line/field, and config_hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import ConfigError, SynthesisConfig, TrainingConfig, config_hash, load_config


def test_quickstart_preset_loads_and_overrides_apply() -> None:
    config = load_config("quickstart", ["sampling.temperature=0.3", "game.candidates=4", "tools.enabled=[calculator]"])
    assert isinstance(config, SynthesisConfig)
    assert config.sampling.temperature == 0.3
    assert config.game.candidates == 4
    assert config.tools.enabled == ["calculator"]
    assert config.models["default"].name == "smollm2-135m-instruct"


def test_every_preset_validates() -> None:
    for name in ("quickstart", "cluster"):
        load_config(name)
    assert load_config("train_dpo", schema=TrainingConfig).beta == 0.1


def test_hash_ignores_execution_knobs_but_not_data_settings() -> None:
    base = config_hash(load_config("quickstart"))
    execution_only = [
        "ray.episodes_in_flight=64",
        "ray.address=ray://head:10001",
        "models.default.max_batch_size=2",
        "models.default.threads=8",
        "storage.url=postgresql://db/x",
    ]
    assert config_hash(load_config("quickstart", execution_only)) == base
    for data_change in ("sampling.temperature=0.1", "game.accept_threshold=9", "models.default.name=org/other",
                        "prompts=[{builtin: coding}]", "tools.enabled=[]"):
        assert config_hash(load_config("quickstart", [data_change])) != base, data_change


def test_engine_threads_come_from_the_setting_else_omp_num_threads_else_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    model = load_config("quickstart").models["default"]
    assert model.threads is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert model.torch_threads() == 3
    assert model.model_copy(update={"threads": 5}).torch_threads() == 5
    for unusable in ("", "0", "many"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert model.torch_threads() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert model.torch_threads() == len(os.sched_getaffinity(0))


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  temperature: 0.5\n  top_p: 0.9: 1\ngame: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert str(err.value).startswith(f"{bad}:3: invalid YAML"), err.value


def test_unknown_field_and_bad_value_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  temprature: 0.5\ngame:\n  candidates: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    message = str(err.value)
    assert message.startswith(str(bad))
    assert "field 'sampling.temprature': unknown setting (did you mean temperature?)" in message
    assert "field 'game.candidates'" in message and "greater than or equal to 2" in message


def test_role_must_name_a_configured_model() -> None:
    with pytest.raises(ConfigError, match="roles.judge names model 'big'"):
        load_config("quickstart", ["roles.judge=big"])


def test_bad_override_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config("quickstart", ["sampling.temperature"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/file.yaml")


def test_builtin_arithmetic_limit_gives_that_many_distinct_prompts() -> None:
    from pipelines.prompt_sources import arithmetic_prompts

    rows = arithmetic_prompts(1000, seed=1)
    # prompts are stored de-duplicated by content: a repeat would silently shrink the run
    assert len({row["prompt"] for row in rows}) == 1000
    assert arithmetic_prompts(1000, seed=1) == rows
    with pytest.raises(ConfigError, match="ran out of distinct problems"):
        arithmetic_prompts(10**6, seed=0)


def test_builtin_arithmetic_asks_for_the_final_form_and_the_one_step_set_is_one_operation() -> None:
    from pipelines.prompt_sources import ANSWER_INSTRUCTION, arithmetic_prompts, load_prompts
    from tools.calculator import evaluate

    config = load_config("quickstart")
    assert [s.builtin for s in config.prompts] == ["arithmetic_one_step"]
    rows = load_prompts(config.prompts)
    assert len(rows) == 8 and all(r.messages[-1]["content"].endswith(ANSWER_INSTRUCTION) for r in rows)
    for row in rows:
        expression = row.meta["expression"]
        assert sum(expression.count(op) for op in "+-*/") == 1, expression
        assert row.meta["answer"] == evaluate(expression) and row.meta["answer"] > 0
    assert all(r["prompt"].endswith(ANSWER_INSTRUCTION) for r in arithmetic_prompts(20))


def test_held_out_split_is_fixed_disjoint_and_never_played_by_synthesis(tmp_path) -> None:
    from configs.schema import PromptSourceConfig
    from configs.splits import held_out
    from pipelines.prompt_sources import load_prompts

    def texts(**source) -> set[str]:
        return {r.messages[-1]["content"] for r in load_prompts([PromptSourceConfig(**source)])}

    train, heldout = texts(builtin="arithmetic", limit=200), texts(builtin="arithmetic", limit=50, split="heldout")
    assert len(train) == 200 and len(heldout) == 50 and not train & heldout
    assert texts(builtin="arithmetic", limit=50, split="heldout") == heldout, "the same problems every time"
    everything = texts(builtin="arithmetic", limit=1000, split="all")
    assert 0.15 < sum(held_out(t) for t in everything) / len(everything) < 0.25, "about one in five"
    occupations = load_prompts([PromptSourceConfig(builtin="occupations", split="heldout")])
    assert 0 < len(occupations) < 30
    assert not {r.meta["occupation"] for r in occupations} & {
        r.meta["occupation"] for r in load_prompts([PromptSourceConfig(builtin="occupations")])}
    # a run's stored config names the split it played; synthesis refuses the held-out one
    config = load_config("quickstart")
    assert [s.split for s in config.prompts] == ["train"] and config.model_dump()["prompts"][0]["split"] == "train"
    with pytest.raises(ConfigError, match=r"prompts\[0\]\.split is 'heldout'"):
        load_config("quickstart", ["prompts=[{builtin: arithmetic, split: heldout}]"])
    # a file is used whole unless asked; asked, it splits by each prompt's id
    rows = tmp_path / "p.jsonl"
    rows.write_text("".join(f'{{"prompt": "question {i}", "answer": {i}}}\n' for i in range(100)))
    whole = load_prompts([PromptSourceConfig(path=str(rows))])
    kept = load_prompts([PromptSourceConfig(path=str(rows), split="heldout")])
    assert len(whole) == 100 and 0 < len(kept) < 40 and all(held_out(r.id) for r in kept)


def test_one_masking_function_hides_url_passwords_everywhere() -> None:
    from configs.secrets import mask_secrets, masked
    from pipelines.schedule import _database_url_to_env
    from storage.db import redact_url

    assert mask_secrets("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"
    assert mask_secrets("--db postgresql://u:pw@h/db --to a@b http://h:8265") == "--db postgresql://u:***@h/db --to a@b http://h:8265"
    assert redact_url("postgresql://bob:hunter2@h/db") == "postgresql://bob:***@h/db"
    assert masked({"storage": {"url": "mysql://r:s3cret@h/d"}, "n": [1, "x://a:b@c"]}) == {
        "storage": {"url": "mysql://r:***@h/d"},
        "n": [1, "x://a:***@c"],
    }
    command, env = _database_url_to_env(["refresh", "--db", "postgresql://u:pw@h/db", "--config", "c.yaml"])
    assert command == ["refresh", "--config", "c.yaml"] and env == {"PREFSMITH_DB": "postgresql://u:pw@h/db"}
    assert _database_url_to_env(["export", "--db=sqlite:///x.db"]) == (["export"], {"PREFSMITH_DB": "sqlite:///x.db"})
