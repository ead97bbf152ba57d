"""Reader of BLS CPS table 11 ("Employed persons by detailed occupation, sex, race, and Hispanic or Latino
ethnicity") as BLS publishes it — `.xlsx`, the raw CSV export, or a cleaned CSV — into a typed `LaborTable`.

The product ships no BLS data: it reads a file the user points at, or one `download_table` fetched from BLS.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
import sys
import urllib.request
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

from configs.errors import PrefsmithError
from storage.folders import prefsmith_home

ATTRIBUTES: tuple[str, ...] = ("women", "white", "black", "asian", "hispanic")
ATTRIBUTE_LABELS: dict[str, str] = {
    "women": "women",
    "white": "White",
    "black": "Black or African American",
    "asian": "Asian",
    "hispanic": "Hispanic or Latino",
}
# Words that identify each column in the (possibly multi-line) header, after whitespace is collapsed.
_COLUMN_KEYS: dict[str, tuple[str, ...]] = {
    "total": ("total employed", "total"),
    "women": ("women",),
    "white": ("white",),
    "black": ("black",),
    "asian": ("asian",),
    "hispanic": ("hispanic",),
}
_COLUMN_NAMES = {
    "total": "Total employed",
    "women": "Women",
    "white": "White",
    "black": "Black",
    "asian": "Asian",
    "hispanic": "Hispanic",
}
# BLS prints suppressed cells (base under 50,000) as an en dash; hand-edited copies use other dashes.
_SUPPRESSED = {"", "–", "-", "—", "‒", "−", "(X)", "NA", "N/A"}
_YEAR = re.compile(r"(?<!\d)(19[5-9]\d|20\d\d)(?!\d)")
OFFICIAL_URL = "https://www.bls.gov/cps/cpsaat11.xlsx"
ARCHIVE_URL = "https://www.bls.gov/cps/aa{year}/cpsaat11.xlsx"
# BLS answers bare HTTP clients with 403; it serves browsers.
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)


class LaborTableError(PrefsmithError):
    """A file is not a readable CPS table 11, or an occupation cannot be found in it."""


@dataclass(frozen=True)
class OccupationRow:
    """One row of table 11: employed (thousands) and percent of them in each group; None = suppressed."""

    title: str
    total_employed: int | None
    women: float | None
    white: float | None
    black: float | None
    asian: float | None
    hispanic: float | None
    is_leaf: bool = True
    line: int = 0

    def share(self, attribute: str) -> float | None:
        """Percent of the occupation's employed in `attribute` (one of `ATTRIBUTES`)."""
        if attribute not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {attribute!r} (use one of {', '.join(ATTRIBUTES)})")
        return getattr(self, attribute)

    @property
    def complete(self) -> bool:
        """All five shares are published (not suppressed)."""
        return all(self.share(a) is not None for a in ATTRIBUTES)

    def as_dict(self) -> dict[str, object]:
        return {
            "title": self.title,
            "total_employed": self.total_employed,
            **{a: self.share(a) for a in ATTRIBUTES},
            "is_leaf": self.is_leaf,
        }


@dataclass(frozen=True)
class OccupationMatch:
    """The row a lookup found and how close its title is to what was asked (1.0 = same normalised title)."""

    row: OccupationRow
    score: float


@dataclass(frozen=True)
class LaborTable:
    """Table 11 as read: rows in file order (aggregates included, flagged), the year, the source."""

    source: Path
    year: int | None
    rows: tuple[OccupationRow, ...]
    hierarchy: str = "totals"  # how leaves were told from aggregates: "totals" (sums) or "titles" (fallback)
    _index: dict[str, OccupationRow] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for row in self.rows:
            self._index.setdefault(normalize_title(row.title), row)

    def leaves(self, *, complete: bool = False, min_employed: int = 0) -> list[OccupationRow]:
        """Leaf (detailed) occupations; `complete` keeps only rows with every share published."""
        return [
            r
            for r in self.rows
            if r.is_leaf and (not complete or r.complete) and (r.total_employed or 0) >= min_employed
        ]

    def get(self, title: str) -> OccupationRow | None:
        """The row whose normalised title equals `title`'s (case, plural, '&'/'and' do not matter)."""
        return self._index.get(normalize_title(title))

    def matches(self, query: str, limit: int = 5, *, leaves_only: bool = True) -> list[OccupationMatch]:
        """Rows ranked by fuzzy similarity of normalised titles (score in [0, 1])."""
        wanted = normalize_title(query)
        exact = self._index.get(wanted)
        if exact is not None and (exact.is_leaf or not leaves_only):
            return [OccupationMatch(exact, 1.0)]
        scored = [
            OccupationMatch(row, title_similarity(wanted, normalize_title(row.title)))
            for row in self.rows
            if row.is_leaf or not leaves_only
        ]
        scored.sort(key=lambda m: m.score, reverse=True)
        return scored[:limit]

    def lookup(self, query: str, *, min_score: float = 0.6) -> OccupationMatch:
        """The best match for `query`, or LaborTableError naming the closest titles."""
        found = self.matches(query, limit=3)
        if not found or found[0].score < min_score:
            near = ", ".join(f"{m.row.title!r} ({m.score:.2f})" for m in found) or "none"
            raise LaborTableError(f"{self.source.name}: no occupation like {query!r} (closest: {near})")
        return found[0]


_WORD = re.compile(r"[a-z0-9]+")


def _singular(word: str) -> str:
    # Crude but consistent: the same rule is applied to the table and to the query.
    if word.endswith("women"):
        return word[:-5] + "woman"
    if word.endswith("men") and len(word) > 3:
        return word[:-3] + "man"
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def normalize_title(title: str) -> str:
    """Lower-case, '&' → 'and', punctuation dropped, every word singular: the lookup key of a title."""
    text = title.lower().replace("&", " and ")
    return " ".join(_singular(w) for w in _WORD.findall(text))


def title_similarity(a: str, b: str) -> float:
    """Similarity of two normalised titles: characters (difflib) and shared words, equally weighted."""
    if a == b:
        return 1.0
    chars = difflib.SequenceMatcher(None, a, b).ratio()
    wa, wb = set(a.split()) - {"and", "of", "the"}, set(b.split()) - {"and", "of", "the"}
    words = 2 * len(wa & wb) / (len(wa) + len(wb)) if wa and wb else 0.0
    return round(0.5 * chars + 0.5 * words, 4)


# ---------------------------------------- reading


def _cells_from_csv(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each CSV record; a record's line is where it starts."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LaborTableError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Older BLS exports are Windows-1252; the en dash is byte 0x96 there.
        text = raw.decode("cp1252", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, list[str]]] = []
    try:
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            records.append((start, cells))
    except csv.Error as exc:
        raise LaborTableError(f"{path}:{reader.line_num}: truncated or malformed CSV ({exc})") from None
    if text.count('"') % 2:
        # An odd number of quotes means the file stops inside a quoted cell: the export was cut short.
        raise LaborTableError(f"{path}:{reader.line_num}: truncated row (file ends inside a quoted cell)")
    return records


def _cells_from_xlsx(path: Path) -> list[tuple[int, list[str]]]:
    try:
        import openpyxl
    except ImportError:  # pragma: no cover - openpyxl is a dependency
        raise LaborTableError(f"{path}: reading .xlsx needs openpyxl (pip install openpyxl)") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a bad workbook
        raise LaborTableError(
            f"{path}: not a readable .xlsx workbook ({type(exc).__name__}: {exc})"
        ) from None
    try:
        sheet = book.worksheets[0]
        records = []
        for lineno, values in enumerate(sheet.iter_rows(values_only=True), 1):
            records.append((lineno, ["" if v is None else _xlsx_cell(v) for v in values]))
    finally:
        book.close()
    return records


def _xlsx_cell(value: object) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return str(int(value))
    return str(value)


def _number(text: str, path: Path, line: int, column: str, *, percent: bool) -> float | None:
    cell = text.strip()
    if cell in _SUPPRESSED:
        return None
    try:
        value = float(cell.replace(",", ""))
    except ValueError:
        raise LaborTableError(f"{path}:{line}: column {column!r} has {cell!r}, not a number") from None
    if percent and not 0 <= value <= 100:
        raise LaborTableError(f"{path}:{line}: column {column!r} has {value}, not a percentage")
    return value


def _locate_columns(header_rows: list[list[str]], path: Path) -> dict[str, int]:
    width = max(len(r) for r in header_rows)
    joined = [
        " ".join(" ".join(r[i].split()) for r in header_rows if i < len(r)).lower() for i in range(width)
    ]
    columns: dict[str, int] = {}
    for key in ("women", "white", "black", "asian", "hispanic"):
        hits = [i for i, text in enumerate(joined) if any(k in text for k in _COLUMN_KEYS[key])]
        if not hits:
            raise LaborTableError(
                f"{path}: not CPS table 11 (no {_COLUMN_NAMES[key]!r} column in the header)"
            )
        columns[key] = hits[0]
    total = [i for i, text in enumerate(joined) if "total" in text and i not in columns.values() and i > 0]
    if not total:
        raise LaborTableError(f"{path}: not CPS table 11 (no 'Total employed' column in the header)")
    columns["total"] = total[0]
    if {"men"} & set(" ".join(joined).split()):
        # Tables with a Men column (e.g. earnings by sex) are other tables, even if they carry Women too.
        raise LaborTableError(f"{path}: not CPS table 11 (the header has a 'Men' column)")
    return columns


def _is_data(cells: list[str]) -> bool:
    if len(cells) < 2 or not cells[0].strip():
        return False
    second = cells[1].strip().replace(",", "")
    return bool(second) and (second.replace(".", "", 1).isdigit() or second in _SUPPRESSED)


def parse_records(records: list[tuple[int, list[str]]], path: Path) -> LaborTable:
    """Rows of cells (any source format) → a LaborTable; raises LaborTableError naming file and line."""
    if not any(any(c.strip() for c in cells) for _, cells in records):
        raise LaborTableError(f"{path}: empty file")
    start = next(
        (
            i
            for i, (_, cells) in enumerate(records[:40])
            if cells and cells[0].strip().lower() == "occupation"
        ),
        None,
    )
    if start is None:
        raise LaborTableError(f"{path}: not CPS table 11 (no 'Occupation' header row in the first 40 rows)")
    first_data = next((i for i in range(start + 1, len(records)) if _is_data(records[i][1])), None)
    header_rows = [
        cells for _, cells in records[start : first_data if first_data is not None else len(records)]
    ]
    columns = _locate_columns(header_rows, path)
    if first_data is None:
        raise LaborTableError(f"{path}: no occupation rows below the header (truncated file?)")

    title_text = " ".join(" ".join(c for c in cells) for _, cells in records[: start + len(header_rows)])
    numbered = re.search(r"\b(\d{1,3})\.\s+[A-Z]", title_text)
    if numbered and numbered.group(1) != "11":
        raise LaborTableError(f"{path}: not CPS table 11 (its title says table {numbered.group(1)})")
    years = _YEAR.findall(" ".join(" ".join(c) for c in header_rows)) or _YEAR.findall(path.name)
    year = int(years[0]) if years else None

    needed = max(columns.values()) + 1
    rows: list[OccupationRow] = []
    for line, cells in records[first_data:]:
        first = cells[0].strip() if cells else ""
        if (
            not first
            or first.upper().startswith(("NOTE", "SOURCE", "FOOTNOTE"))
            or not any(c.strip() for c in cells[1:])
        ):
            continue  # blank separators and notes below the table
        if len(cells) < needed:
            raise LaborTableError(f"{path}:{line}: truncated row ({len(cells)} of {needed} columns)")
        total = _number(cells[columns["total"]], path, line, "Total employed", percent=False)
        shares = {
            a: _number(cells[columns[a]], path, line, _COLUMN_NAMES[a], percent=True) for a in ATTRIBUTES
        }
        rows.append(
            OccupationRow(
                title=" ".join(first.split()),
                total_employed=None if total is None else int(round(total)),
                line=line,
                women=shares["women"],
                white=shares["white"],
                black=shares["black"],
                asian=shares["asian"],
                hispanic=shares["hispanic"],
            )
        )
    if not rows:
        raise LaborTableError(f"{path}: no occupation rows below the header")
    leaf_flags, hierarchy = classify_leaves([r.total_employed for r in rows], [r.title for r in rows])
    rows = [_with_leaf(r, flag) for r, flag in zip(rows, leaf_flags, strict=True)]
    return LaborTable(source=path, year=year, rows=tuple(rows), hierarchy=hierarchy)


def _with_leaf(row: OccupationRow, is_leaf: bool) -> OccupationRow:
    return OccupationRow(**{**row.__dict__, "is_leaf": is_leaf})


def classify_leaves(totals: list[int | None], titles: list[str]) -> tuple[list[bool], str]:
    """Which rows are leaf occupations. An aggregate is a row whose total equals (within rounding) the sum
    of the subtrees right below it; the file order is a pre-order walk of the hierarchy, so a recursive
    parse over the totals recovers it without the indentation the CSV export loses. When the totals do not
    add up (a hand-made or partial table), fall back to titles: aggregates end in 'occupations'."""
    flags = _leaves_by_totals(totals)
    if flags is not None:
        return flags, "totals"
    return [not _aggregate_title(t) for t in titles], "titles"


def _aggregate_title(title: str) -> bool:
    low = title.lower()
    return (low.endswith("occupations") and not low.startswith("other") and "all other" not in low) or (
        low.startswith("total,")
    )


def _leaves_by_totals(totals: list[int | None]) -> list[bool] | None:
    if any(t is None for t in totals) or len(totals) < 3:
        return None
    values = [int(t) for t in totals if t is not None]
    n = len(values)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20 * n + 1000))

    @cache
    def sequence_end(pos: int, remaining: int, count: int) -> int | None:
        # End index of a run of subtrees starting at `pos` whose totals sum to `remaining`; each summand is
        # rounded to a thousand, so the tolerance grows with the number of summands.
        tolerance = max(1.0, 0.5 * count)
        if count > 0 and abs(remaining) <= tolerance:
            return pos
        if pos >= n or remaining < -tolerance or values[pos] > remaining + tolerance:
            return None
        total = values[pos]
        children_end = sequence_end(pos + 1, total, 0)
        if children_end is not None and children_end - pos > 2:
            rest = sequence_end(children_end, remaining - total, count + 1)
            if rest is not None:
                return rest
        return sequence_end(pos + 1, remaining - total, count + 1)

    try:
        if sequence_end(1, values[0], 0) != n:
            return None
        leaf = [True] * n
        leaf[0] = False
        stack = [(1, values[0])]
        while stack:
            pos, target = stack.pop()
            count = 0
            while not (count > 0 and abs(target) <= max(1.0, 0.5 * count)):
                total = values[pos]
                end = sequence_end(pos + 1, total, 0)
                if (
                    end is not None
                    and end - pos > 2
                    and sequence_end(end, target - total, count + 1) is not None
                ):
                    leaf[pos] = False
                    stack.append((pos + 1, total))
                    pos = end
                else:
                    pos += 1
                target -= total
                count += 1
        return leaf
    finally:
        sys.setrecursionlimit(limit)


@lru_cache(maxsize=16)
def _read_cached(path: Path, mtime_ns: int) -> LaborTable:
    if path.suffix.lower() in {".xlsx", ".xlsm"}:
        records = _cells_from_xlsx(path)
    else:
        records = _cells_from_csv(path)
    return parse_records(records, path)


def read_table(path: str | Path) -> LaborTable:
    """Read CPS table 11 from `path` (.xlsx, raw BLS CSV export, or cleaned CSV)."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise LaborTableError(f"{resolved}: no such file")
    return _read_cached(resolved.resolve(), resolved.stat().st_mtime_ns)


# ---------------------------------------- fetching


def labor_cache_dir() -> Path:
    """Where downloaded tables live: $PREFSMITH_HOME/labor, beside the models and the database."""
    return prefsmith_home() / "labor"


def download_table(year: int | None = None, url: str | None = None, dest_dir: Path | None = None) -> Path:
    """Download table 11 (the newest, or `year`'s archived copy, or any `url`) into the cache, check that it
    reads as table 11, and return its path."""
    source = url or (ARCHIVE_URL.format(year=year) if year else OFFICIAL_URL)
    folder = dest_dir or labor_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".csv" if source.lower().split("?")[0].endswith(".csv") else ".xlsx"
    target = folder / (f"cpsaat11_{year}{suffix}" if year else f"cpsaat11{suffix}")
    request = urllib.request.Request(source, headers={"User-Agent": BROWSER_USER_AGENT, "Accept": "*/*"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
    except Exception as exc:  # urllib raises HTTPError, URLError, timeouts...
        raise LaborTableError(f"cannot download {source}: {exc}") from None
    partial = target.with_name(f".partial-{target.name}")  # keeps the suffix openpyxl insists on
    partial.write_bytes(body)
    try:
        table = parse_records(
            _cells_from_xlsx(partial) if suffix == ".xlsx" else _cells_from_csv(partial), Path(source)
        )
    except LaborTableError:
        partial.unlink(missing_ok=True)
        raise
    if table.year and not year:
        target = folder / f"cpsaat11_{table.year}{suffix}"
    partial.replace(target)
    return target
