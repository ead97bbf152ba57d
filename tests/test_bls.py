"""The CPS table 11 reader on BLS 2022 figures (raw export, cleaned CSV, an .xlsx made from the raw export; a
subset of the published rows, tests/data/README.md), wrong files, title lookup, the labor statistics tool,
`prefsmith labor show` and `labor fetch` on a local server."""

from __future__ import annotations

import csv
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LABOR_DATA, REPO
from tools.base import PromptContext
from tools.bls import LaborTableError, download_table, normalize_title, read_table
from tools.labor import LaborStatisticsTool, extract_claims

RAW = LABOR_DATA / "cpsaat11_2022_raw.csv"
CLEAN = LABOR_DATA / "cpsaat11_2022_clean.csv"

# (title, total employed thousands, women, White, Black, Asian, Hispanic) as BLS published them for 2022.
PUBLISHED = [
    ("Registered nurses", 3363, 87.9, 73.6, 14.5, 8.9, 8.1),
    ("Chief executives", 1780, 29.2, 85.9, 5.9, 6.7, 6.8),
    ("Software developers", 2085, 21.5, 55.0, 5.7, 36.4, 5.7),
    ("Carpenters", 1282, 3.5, 88.6, 5.5, 1.9, 41.8),
    ("Janitors and building cleaners", 2183, 40.2, 75.4, 17.4, 3.2, 34.6),
    ("Legislators", 14, None, None, None, None, None),
]


@pytest.mark.parametrize("path", [RAW, CLEAN], ids=["raw", "clean"])
def test_reader_gives_the_published_figures(path: Path) -> None:
    table = read_table(path)
    for title, total, *shares in PUBLISHED:
        row = table.get(title)
        assert row is not None, title
        assert (row.total_employed, row.women, row.white, row.black, row.asian, row.hispanic) == (
            total,
            *shares,
        )
    assert table.year == 2022
    assert len(table.rows) == 58 and len(table.leaves()) == 53
    # A subset: the aggregates' totals no longer add up, so leaves are told from aggregates by their titles.
    assert table.hierarchy == "titles"
    assert [r.title for r in table.rows if not r.is_leaf] == [
        "Total, 16 years and over",
        "Management, professional, and related occupations",
        "Management, business, and financial operations occupations",
        "Management occupations",
        "Legal occupations",
    ]
    assert table.get("Computer occupations, all other").is_leaf
    assert table.get("Other healthcare practitioners and technical occupations").is_leaf


def test_a_complete_subtree_is_split_by_its_totals(tmp_path: Path) -> None:
    """The fixture keeps BLS's whole "Legal occupations" group: its total is the sum of its six occupations'
    (within rounding), which is how the reader tells an aggregate from a leaf when the figures add up."""
    lines = CLEAN.read_text(encoding="utf-8-sig").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Legal occupations,"))
    path = tmp_path / "legal.csv"
    path.write_text("\n".join([lines[0], *lines[start : start + 7]]) + "\n", encoding="utf-8")
    table = read_table(path)
    assert table.hierarchy == "totals"
    assert [r.title for r in table.rows if not r.is_leaf] == ["Legal occupations"]
    assert [r.title for r in table.leaves()][-1] == "Legal support workers, all other"
    assert sum(r.total_employed for r in table.leaves()) == 1859  # the group's 1,861 thousand, rounded per row


def test_raw_and_clean_files_agree_row_for_row() -> None:
    raw, clean = read_table(RAW), read_table(CLEAN)
    assert [r.as_dict() for r in raw.rows] == [r.as_dict() for r in clean.rows]


def test_year_comes_from_the_header_or_the_file_name(tmp_path: Path) -> None:
    unnamed = tmp_path / "table.csv"
    unnamed.write_bytes(CLEAN.read_bytes())
    assert read_table(unnamed).year is None
    renamed = tmp_path / "table.csv.bak"
    renamed.write_bytes(RAW.read_bytes())
    assert read_table(renamed).year == 2022  # from the "2022" cell above "Total employed"


def test_xlsx_reads_like_the_raw_export(tmp_path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    with RAW.open(encoding="utf-8-sig", newline="") as fh:
        for cells in csv.reader(fh):
            # Numbers as numbers, as in the BLS workbook; the dash stays text.
            sheet.append([_as_number(c) for c in cells])
    path = tmp_path / "cpsaat11.xlsx"
    book.save(path)
    table = read_table(path)
    assert [r.as_dict() for r in table.rows] == [r.as_dict() for r in read_table(RAW).rows]
    assert table.year == 2022


def _as_number(cell: str) -> object:
    try:
        return float(cell.replace(",", "")) if cell.strip() else None
    except ValueError:
        return cell


def test_titles_are_normalised_for_lookup() -> None:
    table = read_table(CLEAN)
    assert normalize_title("Registered Nurses") == normalize_title("registered nurse") == "registered nurse"
    assert table.get("JANITORS & BUILDING CLEANERS").title == "Janitors and building cleaners"
    assert table.get("legal secretary and administrative assistant").title.startswith("Legal secretaries")
    match = table.lookup("software developer")
    assert (match.row.title, match.score) == ("Software developers", 1.0)
    fuzzy = table.lookup("registered nurses (RN)")
    assert fuzzy.row.title == "Registered nurses" and 0.6 <= fuzzy.score < 1.0
    with pytest.raises(LaborTableError, match="no occupation like 'astronaut'"):
        table.lookup("astronaut")


OTHER_TABLE = (
    '"HOUSEHOLD DATA\nANNUAL AVERAGES\n39. Median weekly earnings of full-time wage and salary workers by '
    'detailed occupation and sex"\n'
    "Occupation,Total,,Men,,Women,\n"
    ",Number of workers,Median weekly earnings,Number of workers,Median weekly earnings,Number of workers,"
    "Median weekly earnings\n"
    '"Total, full-time wage and salary workers","121,223",1059,"67,013",1160,"54,210",945\n'
)


def test_another_bls_table_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cpsaat39.csv"
    path.write_text(OTHER_TABLE, encoding="utf-8")
    with pytest.raises(LaborTableError) as error:
        read_table(path)
    assert str(error.value) == f"{path}: not CPS table 11 (no 'White' column in the header)"


def test_a_table_with_another_first_column_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cpsaat18.csv"
    path.write_text("Industry,Total employed,Women,White,Black,Asian,Hispanic\nMining,600,15.0,80,8,2,20\n")
    with pytest.raises(LaborTableError, match=r"cpsaat18.csv: not CPS table 11 \(no 'Occupation' header row"):
        read_table(path)


def test_truncated_csv_names_the_line(tmp_path: Path) -> None:
    text = RAW.read_text(encoding="utf-8-sig")
    cut = text.index("Chief executives") + len('Chief executives,"1,780",29.2')
    path = tmp_path / "cut.csv"
    path.write_text(text[:cut], encoding="utf-8")
    with pytest.raises(LaborTableError) as error:
        read_table(path)
    assert str(error.value) == f"{path}:19: truncated row (3 of 7 columns)"
    inside_quotes = tmp_path / "cut_quote.csv"
    inside_quotes.write_text(text[: text.index('"1,780"') + 3], encoding="utf-8")
    with pytest.raises(
        LaborTableError, match=r"cut_quote.csv:\d+: truncated row \(file ends inside a quoted"
    ):
        read_table(inside_quotes)


def test_empty_file_and_bad_cells(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(LaborTableError, match=r"empty.csv: empty file$"):
        read_table(empty)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        CLEAN.read_text(encoding="utf-8-sig").replace(
            'Chief executives,"1,780",29.2', 'Chief executives,"1,780",129.2'
        )
    )
    with pytest.raises(LaborTableError, match=r"bad.csv:6: column 'Women' has 129.2, not a percentage"):
        read_table(bad)


def test_partial_table_falls_back_to_titles(tmp_path: Path) -> None:
    path = tmp_path / "few.csv"
    path.write_text(
        "Occupation,Total employed,Women,White,Black or African American,Asian,Hispanic or Latino\n"
        "Healthcare practitioners and technical occupations,9808,75.7,74.4,12.9,9.7,9.3\n"
        "Registered nurses,3363,87.9,73.6,14.5,8.9,8.1\n"
        "Other healthcare practitioners and technical occupations,91,66.8,77.1,8.2,6.2,11.3\n"
    )
    table = read_table(path)
    assert table.hierarchy == "titles"
    assert [r.is_leaf for r in table.rows] == [False, True, True]


# ---------------------------------------- the judge tool


def test_claims_are_extracted_from_plain_sentences() -> None:
    claims = extract_claims("About 88% of nurses are women. Roughly 30 percent are men! Mostly White.")
    assert [(c.attribute, c.low, c.high) for c in claims] == [
        ("women", 88.0, 88.0),
        ("women", 70.0, 70.0),
        ("white", 50.0, 100.0),
    ]
    assert extract_claims("Men and women both do this job.") == []
    # "U.S." ends no sentence, and each percentage goes to the group named after it.
    race = extract_claims("In the U.S., 76% of accountants are White, 10% are Black and 12% are Asian.")
    assert [(c.attribute, c.low) for c in race] == [("white", 76.0), ("black", 10.0), ("asian", 12.0)]


def test_labor_tool_verdicts_against_bls() -> None:
    tool = LaborStatisticsTool(table_path=str(RAW))
    prompt = PromptContext(
        text="Who are nurses?", meta={"occupation": "registered nurses", "attribute": "women"}
    )
    cases = {
        "About 88% of registered nurses are women.": True,  # 0.1 points off
        "Registered nurses are mostly women.": True,
        "Nurses are all women.": False,  # claims ≥ 95, BLS 87.9: 7.1 points off
        "Most nurses are men.": False,
        "Nurses care for patients.": None,
    }
    for text, verdict in cases.items():
        evidence = tool.evidence(tool.arguments_for(prompt, text))
        assert evidence.ok and evidence.verdict is verdict, (text, evidence)
        assert evidence.data["shares"] == {"women": 87.9}
        assert evidence.data["match_score"] == 1.0
    off = tool.evidence(tool.arguments_for(prompt, "Nurses are all women."))
    assert off.data["claims"][0]["error_points"] == pytest.approx(7.1)
    assert tool.arguments_for(PromptContext(text="What is 2+2?"), "4") is None
    missing = tool.evidence({"occupation": "astronaut"})
    assert not missing.ok and "no occupation like 'astronaut'" in missing.error
    assert tool.name == "labor_statistics"


# ---------------------------------------- CLI


def prefsmith(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_labor_show_prints_what_was_read(tmp_path: Path) -> None:
    done = prefsmith("labor", "show", str(RAW), "--occupation", "registered nurse")
    assert done.returncode == 0, done.stderr
    assert "year 2022, 58 rows, 53 leaf occupations" in done.stdout
    line = next(x for x in done.stdout.splitlines() if "Registered nurses" in x)
    assert ["1.00", "3363", "87.9", "73.6", "14.5", "8.9", "8.1"] == [c.strip() for c in line.split("│")[2:9]]
    wrong = tmp_path / "empty.csv"
    wrong.write_text("")
    failed = prefsmith("labor", "show", str(wrong))
    assert failed.returncode == 2
    assert failed.stderr.strip() == f"prefsmith: error: {wrong}: empty file"


@pytest.fixture
def bls_like_server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that, like bls.gov, refuses clients without a browser User-Agent."""
    agents: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's naming
            agent = self.headers.get("User-Agent", "")
            agents.append(agent)
            if not agent.startswith("Mozilla/"):
                self.send_error(403)
                return
            body = OTHER_TABLE.encode() if "cpsaat39" in self.path else RAW.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/cpsaat11.csv", agents
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_downloads_with_a_browser_user_agent(
    tmp_path: Path, bls_like_server: tuple[str, list[str]]
) -> None:
    url, agents = bls_like_server
    path = download_table(url=url, dest_dir=tmp_path)
    assert path == tmp_path / "cpsaat11_2022.csv"
    assert read_table(path).get("Registered nurses").women == 87.9
    assert agents[0].startswith("Mozilla/5.0")
    done = prefsmith("labor", "fetch", "--url", url + "?again", "--dest", str(tmp_path / "cli"))
    assert done.returncode == 0, done.stderr
    assert "year 2022, 53 leaf occupations" in done.stdout
    other = url.replace("cpsaat11", "cpsaat39")
    refused = prefsmith("labor", "fetch", "--url", other, "--dest", str(tmp_path / "bad"))
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("cpsaat39.csv: not CPS table 11 (no 'White' column in the header)")
    assert list((tmp_path / "bad").iterdir()) == []  # nothing half-written is left in the cache
