"""samples.csv as people edit it: saved again by a spreadsheet (byte-order mark, TRUE/FALSE, ``;`` and
decimal commas, CRLF, blank lines), read the same; a value that is neither is refused naming row and value."""

import pytest

from napari_histodiff.core.base.errors import HistodiffError
from napari_histodiff.core.formats.records import (
    COLUMNS, TileRecord, parse_bool, parse_number, read_csv, read_records, write_records,
)


def _records(n=3):
    return [TileRecord(id=f"TUM_{i:05d}", file=f"TUM/TUM_{i:05d}.tif", target_class="TUM", index=i, seed=0,
                       sample_seed=1000 + i, sampler="ddim", steps=50, eta=1.0, guidance=10.0, bundle_hash="ab",
                       confidence=0.25 * (i + 1), centroid_distance=1.5, kept=(i % 2 == 0) if i < 2 else None)
            for i in range(n)]


def _as_spreadsheet(text: str, sep=",", decimal=".") -> str:
    """What a spreadsheet writes back: True/False as TRUE/FALSE, numbers with its separators."""
    lines = []
    for line in text.splitlines():
        cells = []
        for cell in line.split(","):
            cell = {"True": "TRUE", "False": "FALSE"}.get(cell, cell)
            if decimal != "." and cell.replace(".", "", 1).isdigit() and "." in cell:
                cell = cell.replace(".", decimal)
            cells.append(cell)
        lines.append(sep.join(cells))
    return "\r\n".join(lines) + "\r\n\r\n"


def test_written_records_read_back_the_same(tmp_path):
    write_records(tmp_path / "samples.csv", _records())
    back = read_records(tmp_path)
    assert [r.as_row() for r in back] == [r.as_row() for r in _records()]
    assert [r.kept for r in back] == [True, False, None]


@pytest.mark.parametrize("sep,decimal", [(",", "."), (";", ",")])
def test_a_file_saved_again_by_a_spreadsheet_reads_the_same(tmp_path, sep, decimal):
    write_records(tmp_path / "samples.csv", _records())
    text = _as_spreadsheet((tmp_path / "samples.csv").read_text(encoding="utf-8"), sep, decimal)
    assert "TRUE" in text and "FALSE" in text
    (tmp_path / "samples.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # with a byte-order mark
    back = read_records(tmp_path)
    assert [r.kept for r in back] == [True, False, None]
    assert [r.confidence for r in back] == [0.25, 0.5, 0.75] and back[0].id == "TUM_00000"
    assert [r.as_row() for r in back] == [r.as_row() for r in _records()]


def test_a_value_that_is_not_true_or_false_is_refused_naming_row_and_value(tmp_path):
    write_records(tmp_path / "samples.csv", _records())
    lines = (tmp_path / "samples.csv").read_text(encoding="utf-8").splitlines()
    k = COLUMNS.index("kept")
    cells = lines[2].split(",")
    cells[k] = "maybe"
    lines[2] = ",".join(cells)
    (tmp_path / "samples.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(HistodiffError) as info:
        read_records(tmp_path)
    text = str(info.value)
    assert "row 3" in text and "column kept" in text and "'maybe'" in text and "samples.csv" in text


def test_a_bad_number_is_refused_naming_row_and_value(tmp_path):
    write_records(tmp_path / "samples.csv", _records())
    text = (tmp_path / "samples.csv").read_text(encoding="utf-8").replace(",1001,", ",1.0E+03x,")
    (tmp_path / "samples.csv").write_text(text, encoding="utf-8")
    with pytest.raises(HistodiffError, match=r"row 3, column sample_seed, holds '1.0E\+03x', which is not a whole"):
        read_records(tmp_path)


def test_a_file_that_is_not_utf8_is_refused_with_the_fix(tmp_path):
    records = _records()
    records[0].target_class = "Tumör"
    write_records(tmp_path / "samples.csv", records)
    text = (tmp_path / "samples.csv").read_text(encoding="utf-8")
    (tmp_path / "samples.csv").write_bytes(text.encode("cp1252"))
    with pytest.raises(HistodiffError, match="not UTF-8 text; save it as \"CSV UTF-8\""):
        read_records(tmp_path)


@pytest.mark.parametrize("value,expected", [("TRUE", True), ("True", True), ("true", True), ("1", True),
                                            ("yes", True), (" Yes ", True), ("FALSE", False), ("False", False),
                                            ("0", False), ("no", False), ("", None)])
def test_parse_bool(value, expected):
    assert parse_bool(value, "here") is expected


def test_parse_bool_and_number_refuse_naming_where():
    with pytest.raises(HistodiffError, match="^manifest.csv row 7, column kept, holds 'WAHR'"):
        parse_bool("WAHR", "manifest.csv row 7, column kept,")
    with pytest.raises(HistodiffError, match="use a point, not a comma"):
        parse_number("0,5", float, "x")
    assert parse_number("12.0", int, "x") == 12 and parse_number(" 0.5 ", float, "x") == 0.5
    assert parse_number("", int, "x") is None


def test_read_csv_gives_line_numbers_and_skips_blank_lines(tmp_path):
    (tmp_path / "m.csv").write_bytes("\ufefffile , kept\r\na.png,TRUE\r\n\r\nb.png,0\r\n,\r\n".encode("utf-8"))
    rows = read_csv(tmp_path / "m.csv")
    assert rows == [{"file": "a.png", "kept": "TRUE", "_line": 2}, {"file": "b.png", "kept": "0", "_line": 4}]
