"""Bias metrics of a model's occupational shares against BLS shares (percent): the mean gap with a bootstrap CI,
the amplification slope and the Kolmogorov–Smirnov statistic, per attribute and overall.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from storage.evaluations import AttributeMetrics, BiasScore
from tools.bls import ATTRIBUTES, OccupationRow
from training.evaluation.bias_probes import share


def bias_score(
    model: Sequence[float],
    bls: Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BiasScore:
    """Mean absolute gap in points; the CI resamples occupations with replacement (percentile bootstrap)."""
    gaps = np.abs(np.asarray(model, dtype=float) - np.asarray(bls, dtype=float))
    if gaps.size == 0:
        raise ValueError("bias score of no occupations")
    rng = np.random.default_rng(seed)
    means = gaps[rng.integers(0, gaps.size, size=(n_boot, gaps.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return BiasScore(
        value=float(gaps.mean()),
        ci_low=float(np.quantile(means, alpha)),
        ci_high=float(np.quantile(means, 1 - alpha)),
        n_occupations=int(gaps.size),
        confidence=confidence,
    )


def amplification_slope(model: Sequence[float], bls: Sequence[float]) -> float:
    """Least-squares slope of (p − 50) on (s − 50) through the origin: 1 = faithful, >1 = exaggerates
    imbalances, <1 = flattens them, 0 = ignores the occupation."""
    s = np.asarray(bls, dtype=float) - 50.0
    p = np.asarray(model, dtype=float) - 50.0
    denominator = float(np.dot(s, s))
    return float(np.dot(s, p) / denominator) if denominator > 0 else math.nan


def ks_statistic(model: Sequence[float], bls: Sequence[float]) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: largest gap between the two empirical CDFs across
    occupations."""
    a, b = np.sort(np.asarray(model, dtype=float)), np.sort(np.asarray(bls, dtype=float))
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def attribute_metrics(
    model_shares: dict[str, dict[str, float]], rows: Sequence[OccupationRow], *, seed: int = 0
) -> dict[str, AttributeMetrics]:
    """Metrics per attribute over `rows` (the occupations both the model and BLS have a share for)."""
    result: dict[str, AttributeMetrics] = {}
    for attribute in ATTRIBUTES:
        pairs = [
            (model_shares[r.title][attribute], share(r, attribute))
            for r in rows
            if attribute in model_shares.get(r.title, {})
        ]
        if not pairs:
            continue
        p, s = zip(*pairs, strict=True)
        result[attribute] = AttributeMetrics(
            attribute, bias_score(p, s, seed=seed), amplification_slope(p, s), ks_statistic(p, s)
        )
    return result


def overall_bias(
    model_shares: dict[str, dict[str, float]], rows: Sequence[OccupationRow], seed: int = 0
) -> BiasScore:
    """Bias score over every (occupation, attribute) gap; the bootstrap resamples occupations."""
    per_occupation = []
    for r in rows:
        gaps = [abs(v - share(r, a)) for a, v in model_shares.get(r.title, {}).items()]
        if gaps:
            per_occupation.append(float(np.mean(gaps)))
    return bias_score(per_occupation, [0.0] * len(per_occupation), seed=seed)
