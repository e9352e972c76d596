"""``faces evaluate --photos DIR --labels FILE``: flag and input checks before the photo check
runs (:func:`flows.evaluate_photos.evaluate_photos`), and its table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from faces_cli import setup_logging, stopping
from faces_core import photo_eval as core
from faces_core.annotate.pipeline import NO_MODEL, model_version
from faces_core.dvcouts import owner_of
from faces_core.inference.model import ModelLoadError
from flows.annotate import DvcOutputError, refuse_dvc_output
from flows.evaluate_photos import evaluate_photos
from flows.params.evaluate import evaluate_config

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
    group.add_argument(
        "--all-heads",
        action="store_const",
        const=True,
        help="also score the heads the model withholds (model.json reliable: false), as annotate --all-heads",
    )


def wants_photos(args: argparse.Namespace) -> bool:
    """Whether the flags ask for the photo check rather than the split evaluation."""
    return any(getattr(args, k, None) is not None for k in ("photos", "labels", "iou", "annotations", "all_heads"))


def run_from_args(args: argparse.Namespace) -> int:
    """Check the flags and inputs, run the flow and print the table; exit 2 on a bad input."""
    setup_logging()
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
            all_heads=args.all_heads,
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


def command() -> int:
    """``python -m flows.evaluate_photos`` under the stop path every command shares."""
    return stopping.run_stoppable("evaluate", main)
