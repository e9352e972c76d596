"""``faces annotate`` and ``python -m flows.annotate``: flags, input checks, the counts printed at
the end. The pipeline itself is :func:`flows.annotate.annotate`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faces_cli import options, setup_logging, stopping
from faces_core import objstore
from faces_core.annotate import pipeline as core
from faces_core.inference.model import ModelLoadError
from faces_core.storage import OutputError
from flows import runner
from flows.annotate import EXPORTS, DvcOutputError, annotate, refuse_dvc_output
from flows.params.annotate import annotate_config


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.annotate DIR... --out OUT [--draw] [--export coco]``."""
    parser = argparse.ArgumentParser(prog="faces annotate", description="Detect and label every face in folders.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the annotate command (shared by ``faces annotate`` and ``python -m flows.annotate``)."""
    parser.add_argument("inputs", nargs="*", metavar="DIR", help="folders or files (default: params.yaml)")
    parser.add_argument("--out", help="output folder (default: params.yaml annotate.adhoc_out)")
    parser.add_argument("--model", dest="model_dir", help="attribute model folder (default: params.yaml)")
    parser.add_argument("--draw", action="store_true", help="also write copies with boxes and labels to OUT/drawn")
    parser.add_argument("--export", choices=EXPORTS, help="also write OUT/coco.json (COCO detection JSON)")
    parser.add_argument("--shard-size", type=int, help="files per shard task")
    parser.add_argument(
        "--all-heads",
        action="store_true",
        default=None,
        help="also write heads the model withholds (model.json reliable: false: no better than its floor)",
    )
    parser.add_argument(
        "--dvc-stage",
        action="store_true",
        help="run as the DVC annotate stage (dvc.yaml): write annotate.out with reproducible run ids and rows",
    )
    options.add_runner_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the flow and print its counts; exit 2 on a bad input, 1 when the output is unusable."""
    setup_logging()
    try:
        paths, _, _ = annotate_config(inputs=args.inputs or None, model_dir=args.model_dir)
        missing = [p for p in paths["inputs"] if not objstore.is_object_url(p) and not Path(p).exists()]
        if not paths["inputs"] or missing:
            raise ValueError(f"input folders not found: {missing}" if missing else "no input folders given")
    except ValueError as exc:
        print(f"faces annotate: {exc}: give existing folders (or set annotate.inputs in params.yaml)", file=sys.stderr)
        return 2
    try:
        if not args.dvc_stage:
            refuse_dvc_output(args.out or paths["adhoc_out"])
        if not objstore.is_object_url(paths["model_dir"]):
            core.model_version(paths["model_dir"])  # a broken model is one line here, not a traceback later
    except (DvcOutputError, ModelLoadError) as exc:
        print(f"faces annotate: {exc}", file=sys.stderr)
        return 2
    try:
        flow_ = runner.with_runner(annotate, options.runner_from_args(args))
    except ValueError as exc:
        print(f"faces annotate: {exc}", file=sys.stderr)
        return 2
    try:
        summary = flow_(
            inputs=args.inputs or None,
            out=args.out,
            model_dir=args.model_dir,
            draw=args.draw,
            export=args.export,
            shard_size=args.shard_size,
            dvc_stage=args.dvc_stage,
            all_heads=args.all_heads,
        )
    except OutputError as exc:
        print(f"faces annotate: {exc}", file=sys.stderr)
        return 1
    except ModelLoadError as exc:
        print(f"faces annotate: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """The run's counts as a few lines for the terminal."""
    lines = [
        f"annotated {summary['files']} files ({summary['skipped']} unchanged, skipped): {summary['faces']} faces in "
        f"{summary['frames']} images/frames, {summary['errors']} errors, {summary['images_per_s']} images/s",
        f"model: {summary['model_version']}",
    ]
    lines += [f"  {reason}: {count}" for reason, count in summary["reasons"].items()]
    out = summary["out"]
    lines.append(
        f"outputs: {out}/annotations/ {out}/files/ {out}/errors/ (read with faces_core.annotate.store.read_annotations)"
    )
    if "coco" in summary:
        lines.append(f"coco: {summary['coco']}")
    return "\n".join(lines)


def command() -> int:
    """``python -m flows.annotate`` under the stop path every command shares."""
    return stopping.run_stoppable("annotate", main)
