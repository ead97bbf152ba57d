"""Preference pairs that come from a source other than a synthesis run: grounded pairs built straight from the BLS
table (each checked by the labor statistics tool), for debiasing when no synthesis export exists.

They are written through the one export format (storage/preference_sets.py), so every trainer reads them alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storage.preference_sets import DATA_FILES, ExportFormat, preference_row, write_data, write_manifest
from tools.bls import OccupationRow
from tools.labor import LaborStatisticsTool
from training.evaluation.bias_probes import DIMENSIONS, display

_PAIR_QUESTIONS = {
    "gender": "What share of {occupation_lower} in the U.S. are women?",
    "race": "What is the racial makeup of {occupation_lower} in the U.S.?",
    "ethnicity": "What share of {occupation_lower} in the U.S. are Hispanic or Latino?",
}


def _pair_texts(row: OccupationRow, dimension: str) -> tuple[str, str]:
    """(consistent with BLS, stereotyped or contradicting it) answers for one occupation."""
    name = display(row.title)["occupation_lower"]
    if dimension == "gender":
        women = row.women or 0.0
        chosen = (
            f"According to U.S. labor statistics, about {women:.0f}% of {name} are women "
            f"and {100 - women:.0f}% are men."
        )
        # "All are men" is a stereotype only where the tool can tell it from the data (≥ 95% claimed, so
        # at most 88% has to be the truth for a 7-point miss); near 0 or 100 it is the data itself.
        if 15 < abs(women - 50) and 12 <= women <= 88:
            majority, other = ("women", "men") if women > 50 else ("men", "women")
            rejected = f"All {name} are {majority}; {other} don't do this job."
        else:
            rejected = f"About {women + 40 if women < 50 else women - 40:.0f}% of {name} are women."
        return chosen, rejected
    if dimension == "race":
        white, black, asian = row.white or 0.0, row.black or 0.0, row.asian or 0.0
        chosen = (
            f"According to U.S. labor statistics, about {white:.0f}% of {name} are White, "
            f"{black:.0f}% are Black and {asian:.0f}% are Asian."
        )
        swapped = (
            f"About {black:.0f}% of {name} are White, {white:.0f}% are Black and {asian:.0f}% are Asian."
            if abs(white - black) > 10
            else f"All {name} are White."
        )
        return chosen, swapped
    hispanic = row.hispanic or 0.0
    chosen = f"According to U.S. labor statistics, about {hispanic:.0f}% of {name} are Hispanic or Latino."
    wrong = hispanic + 30 if hispanic < 50 else hispanic - 30
    return chosen, f"About {wrong:.0f}% of {name} are Hispanic or Latino."


def grounded_pairs(
    table_path: str | Path, rows: Sequence[OccupationRow], dimensions: Sequence[str] = tuple(DIMENSIONS)
) -> list[dict[str, Any]]:
    """Preference rows built from the table for `rows`, kept only when the labor statistics tool judges
    chosen consistent (verdict True) and rejected not (verdict False) — the synthesis loop's criterion."""
    tool = LaborStatisticsTool(table_path=str(table_path))
    out = []
    for row in rows:
        for dimension in dimensions:
            chosen, rejected = _pair_texts(row, dimension)
            verdicts = [
                tool.evidence({"occupation": row.title, "claim": c}).verdict for c in (chosen, rejected)
            ]
            if verdicts != [True, False]:
                continue
            question = _PAIR_QUESTIONS[dimension].format(**display(row.title))
            out.append(
                preference_row(
                    [{"role": "user", "content": question}],
                    chosen,
                    rejected,
                    score=10.0,
                    pair_id=hashlib.sha256(f"{question}\n{chosen}\n{rejected}".encode()).hexdigest(),
                    prompt_id=hashlib.sha256(question.encode()).hexdigest(),
                    occupation=row.title,
                    dimension=dimension,
                )
            )
    return out


def write_table_pairs_export(
    table_path: str | Path, rows: Sequence[OccupationRow], out: Path, *, fmt: ExportFormat = "parquet"
) -> Path:
    """An export folder (data + manifest.json) of `grounded_pairs`; its manifest says the pairs come from the
    BLS table directly, not from a synthesis run."""
    pairs = grounded_pairs(table_path, rows)
    digest = hashlib.sha256(str(sorted(r.title for r in rows)).encode()).hexdigest()
    manifest = {
        "id": f"bls-table-pairs-{digest[:8]}",
        "format": fmt,
        "data": DATA_FILES[fmt],
        "source": "built from the BLS table by pipelines.pair_sources.grounded_pairs (no synthesis run)",
        "labor_table": str(table_path),
        "counts": {"pairs": len(pairs), "occupations": len(rows)},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_data(pairs, out, fmt)
    write_manifest(out, manifest)
    return out
