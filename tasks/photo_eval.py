"""Prefect task of the evaluate-photos flow: score annotate's output against labelled photos."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from faces_core import photo_eval as core
from faces_core.annotate import store


@task(name="score-photos", cache_policy=NO_CACHE)
def score_photos(photos: str, labels: Sequence[core.LabelledBox], annotations: str, threshold: float) -> dict[str, Any]:
    """Read the annotations of ``photos`` from ``annotations``, match and score them, publish a table.

    Files the annotate run rejected are listed under ``file_errors`` (their labelled faces
    are counted as missed).
    """
    rows = store.read_annotations(annotations).to_pylist()
    report = core.score_photos(core.detections_from_rows(rows, photos), labels, threshold)
    labelled = {b.file for b in labels}
    failed = [
        {"file": core.relative_file(row["file"], photos), "reason": row["reason"], "message": row["message"]}
        for row in store.latest_files(annotations).to_pylist()
        if row["status"] == "error"
    ]
    report["file_errors"] = [f for f in failed if f["file"] in labelled]
    det = report["detection"]
    get_run_logger().info(
        "%d of %d labelled faces matched, %d missed, %d extra; %d files rejected",
        det["matched"],
        det["labelled_faces"],
        det["missed"],
        det["extra"],
        len(report["file_errors"]),
    )
    table = [{"measure": k, "value": str(v)} for k, v in det.items()]
    table += [
        {"measure": f"{name} acc / macro-F1 (n)", "value": f"{s['accuracy']} / {s['macro_f1']} ({s['n']})"}
        for name, s in report["attributes"].items()
    ]
    create_table_artifact(table=table, key="evaluate-photos", description="Faces found and attributes scored")
    return report
