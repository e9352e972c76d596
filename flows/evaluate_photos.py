"""The ``evaluate-photos`` flow: the in-the-wild check of detector and attribute model.

``faces evaluate --photos DIR --labels FILE`` (or ``python -m flows.evaluate_photos``) runs
the ``annotate`` flow itself (MTCNN, crops, the attribute model, the settings of params.yaml
``annotate``) over the labelled photos, on local threads, into a temporary folder (or
``--annotations DIR``, kept and reused), then matches its faces to the labelled boxes and
scores them (:mod:`faces_core.photo_eval`). It prints a table and writes the JSON report only
when ``--out`` is given: no default path, so it can never overwrite a DVC output.

Kept apart from ``flows/evaluate.py``: that module is the DVC ``evaluate`` stage, whose code
dependencies are exactly what it imports, and this check is no part of the stage.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from faces_core import photo_eval as core
from flows import runner
from flows.annotate import annotate
from flows.params.evaluate import evaluate_config
from tasks import photo_eval as t


@flow(
    name="evaluate-photos",
    flow_run_name=runner.run_name("evaluate-photos"),
    task_runner=ThreadPoolTaskRunner(),  # type: ignore[arg-type]
    log_prints=False,
)
def evaluate_photos(
    photos: str,
    labels: str,
    model_dir: str | None = None,
    iou: float = core.DEFAULT_IOU,
    annotations: str | None = None,
    report_file: str | None = None,
    all_heads: bool | None = None,
) -> dict[str, Any]:
    """Annotate the labelled photos with the real annotate flow, then match and score.

    Args:
        photos: Folder the labels' ``file`` paths are relative to.
        labels: Labels file (see :mod:`faces_core.photo_eval`).
        model_dir: Attribute model; None = params.yaml ``evaluate.model_dir``.
        iou: Least IoU for a detection to match a labelled box.
        annotations: Annotate output folder to keep (a re-run skips unchanged files); None
            annotates into a temporary folder removed afterwards.
        report_file: Where the JSON report goes; None writes nothing.
        all_heads: Also score the heads the model withholds (annotate's ``--all-heads``;
            None = params.yaml ``annotate.all_heads``).

    Returns:
        The report (:func:`faces_core.photo_eval.score_photos`, plus ``photos``, ``labels``,
        ``model_dir``, ``model_version``, ``annotate`` counts and ``file_errors``).
    """
    boxes = core.read_labels(labels)
    missing = core.missing_files(boxes, photos)
    if missing:
        raise core.LabelsError(f"{labels}: {len(missing)} labelled file(s) not found under {photos}: {missing[:10]}")
    model = str(evaluate_config(model_dir=model_dir)[0].model_dir)
    # Only the labelled files: detections elsewhere in the folder could not be scored anyway.
    files = sorted({os.path.join(os.path.abspath(photos), b.file) for b in boxes})
    local = annotate.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="faces-photos-") as scratch:
        out = annotations or scratch
        summary = local(inputs=files, out=out, model_dir=model, all_heads=all_heads)
        report = t.score_photos(photos, boxes, out, iou)
    report = {
        "photos": photos,
        "labels": labels,
        "model_dir": model,
        "model_version": summary["model_version"],
        "annotate": {k: summary[k] for k in ("files", "skipped", "faces", "errors", "seconds")},
        **report,
    }
    if report_file:
        core.write_report(report, report_file)
    return report


if __name__ == "__main__":  # the command line lives in faces_cli
    from faces_cli.evaluate_photos import command

    raise SystemExit(command())
