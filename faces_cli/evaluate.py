"""``faces evaluate`` and ``python -m flows.evaluate``: score a model on an ingest split
(:func:`flows.evaluate.evaluate`), or with ``--photos``/``--labels`` on labelled photos
(:func:`flows.evaluate_photos.evaluate_photos`, in :mod:`faces_cli.evaluate_photos`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from faces_cli import options, setup_logging, stopping
from faces_core import objstore
from faces_core.inference.settings import SPLITS, EvaluateInputError
from flows import runner
from flows.evaluate import evaluate
from flows.params.evaluate import evaluate_config


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.evaluate [--model DIR] [--data DIR] [--split S] ...``."""
    parser = argparse.ArgumentParser(prog="faces evaluate", description="Score a trained model on an ingested dataset.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the evaluate command (shared by ``faces evaluate`` and ``python -m flows.evaluate``)."""
    parser.add_argument("--model", dest="model_dir", help="model directory (default: params.yaml evaluate.model_dir)")
    parser.add_argument("--data", dest="data_dir", help="ingest output directory (default: params.yaml)")
    parser.add_argument("--split", choices=SPLITS, help="faces to score (default: params.yaml evaluate.split)")
    parser.add_argument("--out", dest="metrics_file", help="metrics JSON (default: params.yaml evaluate.metrics_file)")
    parser.add_argument("--plots-dir", help="confusion matrix directory (default: params.yaml evaluate.plots_dir)")
    parser.add_argument("--min-labels", type=int, help="fewer labels: reported as too_few_labels")
    parser.add_argument("--batch-size", type=int, help="faces per forward pass")
    parser.add_argument("--workers", type=int, help="DataLoader processes")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), help="where to run (default: params.yaml)")
    options.add_runner_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Check the inputs, run the flow and print the per-attribute table."""
    from faces_core.inference.model import ModelLoadError
    from faces_core.train.evaluate import check_inputs, format_eval

    setup_logging()
    overrides = {k: getattr(args, k) for k in ("model_dir", "data_dir", "split", "metrics_file", "plots_dir")}
    numbers = {k: getattr(args, k) for k in ("min_labels", "batch_size", "workers", "device")}
    try:
        paths, settings = evaluate_config(**overrides, **numbers)
        for name, url in paths.remote:  # a URL is checked on its local copy (the task re-syncs it)
            objstore.fetch(url, getattr(paths, name))
        check_inputs(paths, settings.split)
        flow_ = runner.with_runner(evaluate, options.runner_from_args(args))
    except (EvaluateInputError, ValueError, objstore.LocationError) as exc:
        print(f"faces evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        result = flow_(**overrides, **numbers)
    except ModelLoadError as exc:
        print(f"faces evaluate: {exc}", file=sys.stderr)
        return 2
    print(format_eval(result, paths.metrics_file, paths.plots_dir))
    return 0


def command() -> int:
    """``python -m flows.evaluate`` under the stop path every command shares."""
    return stopping.run_stoppable("evaluate", main)
