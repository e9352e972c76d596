"""Prefect task of the evaluate flow: score a model on a dataset split, publish a metrics table."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from faces_core import objstore
from faces_core.inference.settings import EvaluatePaths, EvaluateSettings
from faces_core.train import evaluate as core


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_model(paths: EvaluatePaths, settings: EvaluateSettings) -> dict[str, Any]:
    """Score the model, write eval.json and confusion matrices, publish the ``evaluate-metrics`` table."""
    for name in ("model_dir", "data_dir"):
        url = paths.url(name)
        if url is not None:  # fetched here, on the worker that reads it
            objstore.fetch(url, getattr(paths, name))
    result = core.evaluate(paths, settings)
    logger = get_run_logger()
    for attribute, status, labelled, acc, floor_acc, f1, floor_f1, ece in core.summary_rows(result):
        logger.info(
            "%s: %s, %s labelled, accuracy %s (floor %s), macro-F1 %s (floor %s), ECE %s",
            attribute,
            status,
            labelled,
            acc,
            floor_acc,
            f1,
            floor_f1,
            ece,
        )
    create_markdown_artifact(markdown=core.eval_markdown(result), key="evaluate-metrics")
    return result
