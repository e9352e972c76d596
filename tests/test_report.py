"""Terminal and Markdown views of an ingest summary."""

from __future__ import annotations

from faces_core.errors import REASONS, Reason
from faces_core.report import format_summary, summary_markdown

SUMMARY = {
    "faces": 3,
    "rejections": 2,
    "sources": {
        "imfdb": {
            "images": 4,
            "faces": 3,
            "buckets": {"50-100": 2, "224-inf": 1},
            "splits": {"train": 3},
            "labels": {},
            "rejected": {"too_small": 1, "missing_crop": 1},
        }
    },
}


def test_format_summary_lists_counts_and_paths() -> None:
    text = format_summary(SUMMARY, "out")
    assert "faces kept: 3   rejections: 2" in text
    assert "imfdb: 3 faces from 4 images" in text
    assert "buckets: 50-100=2, 224-inf=1" in text
    assert "rejected: too_small=1, missing_crop=1" in text
    assert "error log: out/errors.parquet" in text


def test_markdown_tables_explain_each_reason() -> None:
    md = summary_markdown(SUMMARY, "out")
    assert md.startswith("# Ingest: 3 faces kept, 2 rejections")
    assert "| 50-100 | 2 |" in md
    assert f"| too_small | 1 | {REASONS[Reason.TOO_SMALL]} |" in md
    assert f"| missing_crop | 1 | {REASONS[Reason.MISSING_CROP]} |" in md
