"""Files the trainers and evaluators wrote, found under the UI's artifact folders and served from them only:
SparsePO mask renders (`prefsmith inspect masks`: masks.html, masks.png) and bias reports
(`prefsmith eval bias`: report.json and its PNG plots).

A path from a request is resolved inside one configured folder and must stay there; only these file kinds
are served.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from configs.errors import NotFoundError
from storage.evaluations import read_bias_report

MAX_DEPTH = 6
MAX_FOLDERS = 5000
SERVED_SUFFIXES = {".png", ".html", ".json", ".md"}


def find_artifacts(roots: list[Path]) -> list[dict[str, Any]]:
    """Mask renders and bias reports under `roots` (each folder once, breadth-first, bounded)."""
    found: list[dict[str, Any]] = []
    seen = 0
    for index, root in enumerate(roots):
        root = root.resolve()
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            seen += 1
            depth = len(Path(folder).relative_to(root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < MAX_DEPTH)
            relative = Path(folder).relative_to(root)
            if "masks.html" in files or "masks.png" in files:
                found.append(
                    {
                        "kind": "masks",
                        "root": index,
                        "folder": str(relative),
                        "html": "masks.html" in files,
                        "png": "masks.png" in files,
                    }
                )
            if "report.json" in files:
                found.append({"kind": "bias", "root": index, "folder": str(relative)})
            if seen >= MAX_FOLDERS:
                break
    return found


def resolve_artifact(roots: list[Path], root: int, path: str) -> Path:
    """The file `path` inside artifact folder number `root`; NotFoundError for anything outside it, any other
    kind of file, or a file that is not there."""
    if not 0 <= root < len(roots):
        raise NotFoundError(f"no artifact folder number {root}")
    base = roots[root].resolve()
    file = (base / path).resolve()
    if not file.is_relative_to(base) or file.suffix not in SERVED_SUFFIXES or not file.is_file():
        raise NotFoundError(f"no artifact {path!r} here")
    if file.suffix == ".html" and file.name != "masks.html":
        raise NotFoundError(f"no artifact {path!r} here")
    return file


def bias_report(roots: list[Path], root: int, path: str) -> dict[str, Any]:
    """A bias report (report.json) as the page shows it: conditions with their scores, plots beside it."""
    file = resolve_artifact(roots, root, path)
    if file.name != "report.json":
        raise NotFoundError(f"{path!r} is not a bias report (report.json)")
    report = read_bias_report(file)
    dimensions = sorted({d for c in report.conditions for d in c.metrics})
    return {
        "labor_table": report.labor_table,
        "labor_year": report.labor_year,
        "held_out": len(report.held_out_occupations),
        "notes": report.notes,
        "settings": report.settings,
        "dimensions": dimensions,
        "conditions": [
            {
                "name": c.name,
                "model": c.model,
                "overall": c.overall,
                "bias": {d: c.metrics[d].bias if d in c.metrics else None for d in dimensions},
                "perplexity": c.perplexity,
            }
            for c in report.conditions
        ],
        "plots": sorted(str(p.relative_to(roots[root].resolve())) for p in file.parent.glob("*.png")),
    }
