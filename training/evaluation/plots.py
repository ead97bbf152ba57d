"""Bar plots of measures with their 95% intervals, one bar per model or round (task reports, `iterate`'s rounds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage.evaluations import TASK_MEASURES, Measure


def plot_measures(
    series: dict[str, dict[str, Measure]],
    path: Path,
    title: str,
    measures: Sequence[tuple[str, str]] = TASK_MEASURES,
    ylabel: str = "share of problems",
) -> None:
    """Bars of each of `measures` (key, label: value with its 95% interval), one bar per entry of `series` (a
    model, a round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(series), 1)
    highest = 0.0
    for offset, (name, found) in enumerate(series.items()):
        xs = [i + offset * width for i in range(len(measures))]
        values = [found[key].value for key, _ in measures]
        errors = [
            [v - found[k].ci95[0] for v, (k, _) in zip(values, measures, strict=True)],
            [found[k].ci95[1] - v for v, (k, _) in zip(values, measures, strict=True)],
        ]
        highest = max([highest] + [found[k].ci95[1] for k, _ in measures])
        axis.bar(xs, values, width, yerr=errors, capsize=3, label=name)
    axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(measures))], [label for _, label in measures])
    axis.set_ylim(0, 1 if highest <= 1 else highest * 1.1)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
