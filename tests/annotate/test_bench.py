"""Smoke test of ``bench/annotate.py`` on a tiny size: both loops run and the JSON is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.annotate import main


@pytest.mark.slow
def test_bench_annotate_runs_on_two_images(tmp_path: Path) -> None:
    out = tmp_path / "annotate.json"
    assert main(["--images", "2", "--device", "cpu", "--target", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["naive"]["images"] == result["ours"]["images"] == 2
    assert result["naive"]["faces"] == result["ours"]["faces"] == 3  # 1 + 2 faces drawn
    assert result["ours"]["peak_rss_mb"] > 0 and result["ratio"] > 0 and result["ok"] is True
