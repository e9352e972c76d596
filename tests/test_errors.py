"""Error log: the closed set of reason codes, Rejection coercion, and the Parquet round trip."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faces_core.errors import (
    ERROR_SCHEMA,
    REASONS,
    Reason,
    Rejection,
    count_by_reason,
    read_errors,
    rejections_to_table,
    write_errors,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _log() -> list[Rejection]:
    return [
        Rejection("tcs", "faces.jsonl:3", "parse", Reason.MALFORMED_LINE, "invalid JSON", T0),
        Rejection("tcs", "http://a.invalid/x.jpg", "download", Reason.HTTP_ERROR, "404", T0 + timedelta(seconds=1)),
        Rejection("imfdb", "A/M/M.txt:7", "parse", Reason.MISSING_CROP, "no crop a.jpg", T0 + timedelta(seconds=2)),
        Rejection("imfdb", "A/M/M.txt:2", "parse", Reason.UNKNOWN_LABEL, "label 'X'", T0 + timedelta(seconds=3)),
        Rejection("tcs", "http://a.invalid/y.jpg", "download", Reason.HTTP_ERROR, "500", T0 + timedelta(seconds=4)),
        Rejection("imfdb", "A/.DS_Store", "parse", Reason.JUNK_FILE, "stray file", T0 + timedelta(seconds=5)),
    ]


def _key(r: Rejection) -> tuple[str, str, str, str, str]:
    return (r.source, r.stage, r.item, str(r.reason), r.message)


# --- reasons ------------------------------------------------------------------------------


def test_every_reason_has_a_description_and_vice_versa() -> None:
    assert set(REASONS) == set(Reason)
    assert len(REASONS) == len(Reason)
    for reason, text in REASONS.items():
        assert isinstance(reason, Reason)
        assert text.strip(), reason


def test_reason_codes_are_snake_case_and_unique() -> None:
    codes = [str(r) for r in Reason]
    assert len(set(codes)) == len(codes)
    for code in codes:
        assert code == code.lower()
        assert code.replace("_", "").isalpha(), code


def test_reason_from_string_is_coerced() -> None:
    r = Rejection("tcs", "x", "parse", "no_faces", "m")  # type: ignore[arg-type]
    assert r.reason is Reason.NO_FACES


@pytest.mark.parametrize("bad", ["nope", "No_Faces", "no faces", ""])
def test_unknown_reason_raises_at_construction(bad: str) -> None:
    with pytest.raises(ValueError, match="Reason"):
        Rejection("tcs", "x", "parse", bad, "m")  # type: ignore[arg-type]


def test_default_time_is_aware_utc() -> None:
    r = Rejection("tcs", "x", "parse", Reason.TIMEOUT, "m")
    assert r.time.tzinfo is not None
    assert r.time.utcoffset() == timedelta(0)


def test_rejection_is_frozen() -> None:
    r = Rejection("tcs", "x", "parse", Reason.TIMEOUT, "m")
    with pytest.raises(AttributeError):
        r.reason = Reason.TOO_SMALL  # type: ignore[misc]


# --- Parquet ------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    log = _log()
    path = write_errors(log, tmp_path / "errors.parquet")
    assert path == tmp_path / "errors.parquet"
    back = read_errors(path)
    assert sorted(back, key=_key) == sorted(log, key=_key)
    for r in back:
        assert isinstance(r.reason, Reason)


def test_written_schema_is_error_schema(tmp_path: Path) -> None:
    path = write_errors(_log(), tmp_path / "errors.parquet")
    schema = pq.read_schema(path)
    assert schema.equals(ERROR_SCHEMA)
    assert schema.field("time").type == pa.timestamp("us", tz="UTC")


def test_timestamps_come_back_in_utc(tmp_path: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2024, 1, 1, 12, 0, tzinfo=plus_two)
    path = write_errors([Rejection("tcs", "x", "parse", Reason.NO_FACES, "m", local)], tmp_path / "e.parquet")
    (back,) = read_errors(path)
    assert back.time.utcoffset() == timedelta(0)
    assert back.time == local  # same instant
    assert (back.time.hour, back.time.minute) == (10, 0)
    assert back.time.microsecond == 0


def test_microseconds_survive(tmp_path: Path) -> None:
    path = write_errors(_log()[:1], tmp_path / "e.parquet")
    assert read_errors(path)[0].time == T0


def test_rows_are_sorted_and_order_is_stable(tmp_path: Path) -> None:
    log = _log()
    shuffled = log[:]
    random.Random(7).shuffle(shuffled)
    a = write_errors(log, tmp_path / "a.parquet")
    b = write_errors(shuffled, tmp_path / "b.parquet")
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.equals(tb)
    back = read_errors(a)
    assert [_key(r) for r in back] == sorted(_key(r) for r in log)
    assert [r.source for r in back] == ["imfdb"] * 3 + ["tcs"] * 3


def test_table_reason_column_holds_plain_codes() -> None:
    table = rejections_to_table(_log())
    assert table.schema.equals(ERROR_SCHEMA)
    assert set(table.column("reason").to_pylist()) == {
        "malformed_line",
        "http_error",
        "missing_crop",
        "unknown_label",
        "junk_file",
    }


def test_empty_log_writes_valid_zero_row_file(tmp_path: Path) -> None:
    path = write_errors([], tmp_path / "errors.parquet")
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema.equals(ERROR_SCHEMA)
    assert read_errors(path) == []


def test_write_accepts_a_generator(tmp_path: Path) -> None:
    path = write_errors((r for r in _log()), tmp_path / "errors.parquet")
    assert len(read_errors(path)) == len(_log())


def test_write_creates_parent_directories(tmp_path: Path) -> None:
    path = write_errors(_log(), tmp_path / "a" / "b" / "errors.parquet")
    assert path.is_file()


def test_write_replaces_previous_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "errors.parquet"
    write_errors(_log(), path)
    write_errors(_log()[:2], path)
    assert len(read_errors(path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.parquet"]


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "errors.parquet"
    write_errors(_log(), path)
    bad = Rejection("tcs", "x", "parse", Reason.NO_FACES, 123)  # type: ignore[arg-type]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_errors([bad], path)
    assert len(read_errors(path)) == len(_log())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.parquet"]


# --- counts -------------------------------------------------------------------------------


def test_count_by_reason_most_frequent_first() -> None:
    counts = count_by_reason(_log())
    assert counts == {
        "http_error": 2,
        "malformed_line": 1,
        "missing_crop": 1,
        "unknown_label": 1,
        "junk_file": 1,
    }
    assert next(iter(counts)) == "http_error"
    assert all(type(k) is str for k in counts)


def test_count_by_reason_empty() -> None:
    assert count_by_reason([]) == {}
