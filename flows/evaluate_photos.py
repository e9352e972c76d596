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

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from faces_core import photo_eval as core
from faces_core.annotate.pipeline import NO_MODEL, model_version
from faces_core.dvcouts import owner_of
from faces_core.inference.model import ModelLoadError
from flows import runner
from flows.annotate import DvcOutputError, annotate, refuse_dvc_output
from flows.params.evaluate import evaluate_config
from tasks import photo_eval as t

NOT_FOR_PHOTOS = {
    "data_dir": "--data",
    "split": "--split",
    "plots_dir": "--plots-dir",
    "min_labels": "--min-labels",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "device": "--device",
    "task_runner": "--task-runner",
    "dask_address": "--dask-address",
    "dask_workers": "--dask-workers",
}
"""Flags of the split evaluation that mean nothing to the photo check (refused, not ignored):
the detector and predictor take their numbers from params.yaml ``annotate``, and the check
runs on local threads because its annotations go to a local temporary folder."""


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
        summary = local(inputs=files, out=out, model_dir=model)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.evaluate_photos --photos DIR --labels FILE [--out JSON] ...``."""
    parser = argparse.ArgumentParser(
        prog="faces evaluate --photos", description="Score detector and attribute model on labelled photos."
    )
    parser.add_argument("--model", dest="model_dir", help="model directory (default: params.yaml evaluate.model_dir)")
    parser.add_argument("--out", dest="metrics_file", help="write the JSON report here (default: nothing written)")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--photos``, ``--labels``, ``--iou`` and ``--annotations`` (``faces evaluate`` adds them to its own)."""
    group = parser.add_argument_group(
        "in-the-wild check",
        "with --photos and --labels: annotate the labelled photos (detector, crops, model) and score the faces "
        "against the labelled boxes instead of an ingest split; --model picks the model, --out writes the JSON "
        "report (nothing is written without it)",
    )
    group.add_argument("--photos", help="folder of photos; the labels' file paths are relative to it")
    group.add_argument("--labels", help="labels JSON: {'faces': [{file, box_xyxy, is_face, gender, ...}]}")
    group.add_argument(
        "--iou", type=float, help=f"least IoU for a detection to match a box (default {core.DEFAULT_IOU})"
    )
    group.add_argument("--annotations", help="keep annotate's output here (default: a temporary folder)")


def wants_photos(args: argparse.Namespace) -> bool:
    """Whether the flags ask for the photo check rather than the split evaluation."""
    return any(getattr(args, k, None) is not None for k in ("photos", "labels", "iou", "annotations"))


def run_from_args(args: argparse.Namespace) -> int:
    """Check the flags and inputs, run the flow and print the table; exit 2 on a bad input."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        photos, labels, iou = _checked_inputs(args)
    except (core.LabelsError, DvcOutputError, ModelLoadError, ValueError) as exc:
        print(f"faces evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        report = evaluate_photos(
            photos=photos,
            labels=labels,
            model_dir=args.model_dir,
            iou=iou,
            annotations=args.annotations,
            report_file=args.metrics_file,
        )
    except (core.LabelsError, ModelLoadError) as exc:
        print(f"faces evaluate: {exc}", file=sys.stderr)
        return 2
    print(f"model: {report['model_dir']} (version {report['model_version']})")
    print(core.format_report(report))
    for failed in report["file_errors"]:
        print(f"rejected by annotate: {failed['file']}: {failed['reason']}: {failed['message']}")
    if args.metrics_file:
        print(f"report: {args.metrics_file}")
    return 0


def _checked_inputs(args: argparse.Namespace) -> tuple[str, str, float]:
    """(photos, labels, IoU) once every flag and input is usable, before anything runs.

    Raises:
        ValueError: A missing or misplaced flag, a missing folder, a bad IoU or no model.
        core.LabelsError: The labels file is unusable or names files not in the folder.
        DvcOutputError: ``--annotations`` or ``--out`` lies in a DVC output.
        ModelLoadError: The model's ``model.json`` is broken.
    """
    if not args.photos or not args.labels:
        raise ValueError("--photos and --labels go together: give both (or neither, to score an ingest split)")
    misplaced = [flag for dest, flag in NOT_FOR_PHOTOS.items() if getattr(args, dest, None) is not None]
    if misplaced:
        raise ValueError(
            f"{', '.join(misplaced)} cannot be used with --photos (the photo check takes the detector and device "
            "from params.yaml annotate and runs locally)"
        )
    if not Path(args.photos).is_dir():
        raise ValueError(f"--photos {args.photos} is not a folder")
    iou = core.DEFAULT_IOU if args.iou is None else args.iou
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"--iou must be in (0, 1], got {iou}")
    boxes = core.read_labels(args.labels)
    missing = core.missing_files(boxes, args.photos)
    if missing:
        raise core.LabelsError(
            f"{args.labels}: {len(missing)} labelled file(s) not found under {args.photos}: {missing[:10]}; "
            "file paths are relative to --photos"
        )
    if args.annotations:
        refuse_dvc_output(args.annotations)
    if args.metrics_file:
        owner = owner_of(args.metrics_file)
        if owner is not None:
            raise DvcOutputError(
                f"--out {args.metrics_file} is inside {owner.path} ({owner.owner}, dvc.yaml), which DVC owns: "
                "write the photo report elsewhere, e.g. --out reports/photos.json"
            )
    model = evaluate_config(model_dir=args.model_dir)[0].model_dir
    if model_version(model) == NO_MODEL:
        raise ValueError(f"no trained model in {model} (model.pt + model.json): train one or pass --model DIR")
    return args.photos, args.labels, iou


if __name__ == "__main__":
    from flows.stopping import run_stoppable

    raise SystemExit(run_stoppable("evaluate", main))
