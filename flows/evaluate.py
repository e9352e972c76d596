"""The ``evaluate`` flow: score a trained model on a split of any ingest output.

Run it as ``python -m flows.evaluate``, ``faces evaluate`` or, once served,
``prefect deployment run evaluate/evaluate``. Parameters left at None come from params.yaml
``evaluate``. Writes ``metrics/eval.json`` and ``plots/confusion/<attribute>.png|.csv``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from faces_core.inference.settings import SPLITS, EvaluateInputError
from flows import runner
from flows.params.evaluate import evaluate_config
from tasks import evaluate as t


@flow(
    name="evaluate",
    flow_run_name=runner.run_name("evaluate"),
    task_runner=runner.flow_task_runner(ThreadPoolTaskRunner()),
    log_prints=False,
)
def evaluate(
    model_dir: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    metrics_file: str | None = None,
    plots_dir: str | None = None,
    min_labels: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Score the model in ``model_dir`` on ``split`` of ``data_dir``.

    Args:
        model_dir: Directory of model.pt + model.json (what ``faces train`` writes).
        data_dir: Any ingest output directory (holds ``faces/``), e.g. new actors ingested apart.
        split: ``train``, ``val``, ``test`` or ``all``.
        metrics_file: Where eval.json goes.
        plots_dir: Where ``<attribute>.png`` and ``.csv`` confusion matrices go.
        min_labels: Fewer labels of an attribute are reported as ``too_few_labels``.
        batch_size: Faces per forward pass.
        workers: DataLoader processes.
        device: ``auto``, ``cuda`` or ``cpu``.

    Returns:
        What eval.json holds.
    """
    paths, settings = evaluate_config(
        model_dir=model_dir,
        data_dir=data_dir,
        split=split,
        metrics_file=metrics_file,
        plots_dir=plots_dir,
        min_labels=min_labels,
        batch_size=batch_size,
        workers=workers,
        device=device,
    )
    return t.evaluate_model(paths, settings)


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
    runner.add_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Check the inputs, run the flow and print the per-attribute table."""
    from faces_core.inference.model import ModelLoadError
    from faces_core.train.evaluate import check_inputs, format_eval

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: getattr(args, k) for k in ("model_dir", "data_dir", "split", "metrics_file", "plots_dir")}
    numbers = {k: getattr(args, k) for k in ("min_labels", "batch_size", "workers", "device")}
    try:
        paths, settings = evaluate_config(**overrides, **numbers)
        check_inputs(paths, settings.split)
        flow_ = runner.with_runner(evaluate, runner.from_args(args))
    except (EvaluateInputError, ValueError) as exc:
        print(f"faces evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        result = flow_(**overrides, **numbers)
    except ModelLoadError as exc:
        print(f"faces evaluate: {exc}", file=sys.stderr)
        return 2
    print(format_eval(result, paths.metrics_file, paths.plots_dir))
    return 0


if __name__ == "__main__":
    from flows.stopping import run_stoppable

    raise SystemExit(run_stoppable("evaluate", main))
