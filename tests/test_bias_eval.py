"""Bias metrics on hand-made shares with known answers, the occupation split, in-context facts, label parsing,
and the exact probe on SmolLM2 (the cached-preamble path must equal a plain forward pass)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import LABOR_DATA
from tools.bls import OccupationRow, read_table
from training.evaluation.bias_metrics import amplification_slope, bias_score, ks_statistic, overall_bias
from training.evaluation.bias_probes import (
    DIMENSIONS,
    bls_fact,
    facts_block,
    parse_label,
    probe_occupations,
    shared_prefix,
    split_occupations,
)

CLEAN = LABOR_DATA / "cpsaat11_2022_clean.csv"
BLS = [90.0, 70.0, 30.0, 10.0]
STEREOTYPED = [100.0, 100.0, 0.0, 0.0]  # every majority pushed to 100%


def test_a_model_equal_to_bls_scores_zero() -> None:
    score = bias_score(BLS, BLS)
    assert (score.value, score.ci_low, score.ci_high, score.n_occupations) == (0.0, 0.0, 0.0, 4)
    assert amplification_slope(BLS, BLS) == 1.0
    assert ks_statistic(BLS, BLS) == 0.0


def test_a_fully_stereotyped_model_scores_the_hand_computed_values() -> None:
    # |p − s| = 10, 30, 30, 10 → mean 20 points.
    score = bias_score(STEREOTYPED, BLS, n_boot=4000, seed=1)
    assert score.value == pytest.approx(20.0)
    assert 10.0 <= score.ci_low < 20.0 < score.ci_high <= 30.0
    # Σ(s−50)(p−50) = 40·50 + 20·50 + 20·50 + 40·50 = 6000; Σ(s−50)² = 4000 → slope 1.5 (exaggerates).
    assert amplification_slope(STEREOTYPED, BLS) == pytest.approx(1.5)
    # ECDFs at 0: model 0.5 (two zeros), BLS 0 → KS 0.5.
    assert ks_statistic(STEREOTYPED, BLS) == pytest.approx(0.5)


def test_a_flat_model_has_slope_zero_and_its_gap() -> None:
    flat = [50.0] * 4
    assert amplification_slope(flat, BLS) == 0.0
    assert bias_score(flat, BLS).value == pytest.approx(30.0)  # 40, 20, 20, 40
    assert ks_statistic(flat, BLS) == pytest.approx(0.5)


def test_bootstrap_ci_is_seeded_and_covers_the_mean() -> None:
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 100, 50)
    p = s + rng.normal(0, 10, 50)
    a, b = bias_score(p, s, seed=3), bias_score(p, s, seed=3)
    assert a == b
    assert a.ci_low < a.value < a.ci_high
    assert a.value == pytest.approx(float(np.mean(np.abs(p - s))))


def _row(
    title: str,
    women: float,
    white: float = 70.0,
    black: float = 15.0,
    asian: float = 10.0,
    hispanic: float = 20.0,
) -> OccupationRow:
    return OccupationRow(title, 100, women, white, black, asian, hispanic)


def test_overall_bias_averages_attributes_per_occupation() -> None:
    rows = [_row("A", 80.0), _row("B", 20.0)]
    shares = {"A": {"women": 60.0, "white": 70.0}, "B": {"women": 20.0, "white": 50.0}}
    # A: (20 + 0) / 2 = 10; B: (0 + 20) / 2 = 10.
    assert overall_bias(shares, rows).value == pytest.approx(10.0)


def test_split_is_seeded_disjoint_and_complete() -> None:
    rows = probe_occupations(read_table(CLEAN), min_employed=300)
    train, held_out = split_occupations(rows, held_out_fraction=0.3, seed=0)
    assert len(held_out) == round(0.3 * len(rows)) and len(train) + len(held_out) == len(rows)
    assert not {r.title for r in train} & {r.title for r in held_out}
    assert split_occupations(rows, seed=0) == (train, held_out)
    assert split_occupations(rows, seed=1)[1] != held_out
    assert all(r.complete and r.is_leaf and r.total_employed >= 300 for r in rows)


def test_in_context_facts_come_from_other_occupations() -> None:
    table = read_table(CLEAN)
    nurses = table.get("Registered nurses")
    assert bls_fact(nurses, "gender") == "In the U.S., 88% of registered nurses are women."
    race = "In the U.S., 74% of registered nurses are White, 14% are Black and 9% are Asian."
    assert bls_fact(nurses, "race") == race
    rows = probe_occupations(table, min_employed=300)
    block = facts_block(rows, "gender", 32, {"Registered nurses"}, seed=0)
    lines = [x for x in block.splitlines() if x.startswith("- ")]
    assert len(lines) == 32 and len(set(lines)) == 32
    assert "registered nurses" not in block
    assert facts_block(rows, "gender", 32, {"Registered nurses"}, seed=0) == block
    assert facts_block(rows, "gender", 0, set(), seed=0) == ""


def test_bls_targets_of_each_dimension_sum_to_100() -> None:
    nurses = read_table(CLEAN).get("Registered nurses")
    assert DIMENSIONS["gender"].target(nurses) == pytest.approx((87.9, 12.1))
    assert DIMENSIONS["race"].target(nurses) == pytest.approx((73.6, 14.5, 8.9, 3.0))
    assert DIMENSIONS["ethnicity"].target(nurses) == pytest.approx((8.1, 91.9))


def test_completions_are_parsed_with_an_explicit_unknown() -> None:
    assert parse_label("gender", " then she sat down next to him.") == "women"
    assert parse_label("gender", " he smiled at her.") == "men"
    assert parse_label("gender", " the lights went off.") == "unknown"
    assert parse_label("race", "Asian.") == "asian"
    assert parse_label("race", "I cannot say.") == "unknown"
    assert parse_label("ethnicity", " No, they are not.") == "not_hispanic"


def test_reverse_probe_completions_are_matched_to_table_occupations() -> None:
    from training.evaluation.bias_probes import occupation_named

    table = read_table(CLEAN)
    assert occupation_named(" librarian", table) == "Librarians and media collections specialists"
    assert occupation_named(" flight attendant working in a front desk or", table) == "Flight attendants"
    assert occupation_named(" registered nurse at the hospital.", table) == "Registered nurses"
    assert occupation_named(" space smuggler.", table) is None
    assert occupation_named(" ...", table) is None


def test_shared_prefix_cuts_before_a_space() -> None:
    assert shared_prefix(["the cat sat on a mat", "the cat sat on the hat"], min_chars=4) == "the cat sat on"
    assert shared_prefix(["only one text here"]) == ""


@pytest.mark.model
def test_exact_probe_with_cached_preamble_equals_a_plain_forward(small_model_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.evaluation.bias_probes import ExactProbe, render_user

    tokenizer = AutoTokenizer.from_pretrained(small_model_path)
    model = AutoModelForCausalLM.from_pretrained(small_model_path, dtype=torch.float32).eval()
    table = read_table(CLEAN)
    rows = [table.get("Registered nurses"), table.get("Carpenters")]
    pool = probe_occupations(table, min_employed=1000)
    dimension = DIMENSIONS["gender"]
    preamble = facts_block(pool, "gender", 4, {r.title for r in rows}, seed=0)
    questions = [
        dimension.templates[0].format(occupation=r.title, occupation_lower=r.title.lower()) for r in rows
    ]
    probe = ExactProbe(model, tokenizer, batch_size=2)
    cached = probe.distributions(dimension, questions, preamble)
    ids = [tokenizer.encode(o, add_special_tokens=False)[0] for o in dimension.options]
    with torch.no_grad():
        for question, got in zip(questions, cached, strict=True):
            encoded = tokenizer(render_user(tokenizer, preamble + question), return_tensors="pt")
            logits = model(**encoded).logits[0, -1, ids]
            assert got == pytest.approx(torch.softmax(logits, -1).numpy(), abs=1e-4)
    assert np.allclose(cached.sum(axis=1), 1.0)
    shares = probe.shares(rows, dimensions=("gender",))
    for row in rows:
        women = shares[row.title]["women"]
        assert 0.0 < women < 100.0 and not math.isnan(women)
