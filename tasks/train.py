"""Prefect task of the train flow: one task runs the whole training loop and reports per epoch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from faces_core.train import loop
from faces_core.train.settings import TrainPaths, TrainSettings


def _round(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(data_dir: str, settings: TrainSettings, paths: TrainPaths, resume: bool) -> dict[str, Any]:
    """Train, updating the ``train-epochs`` table artifact after every epoch."""
    logger = get_run_logger()
    rows: list[dict[str, Any]] = []

    def on_epoch(stats: loop.EpochStats) -> None:
        rows.append(_round(stats.row(timings=True)))
        create_table_artifact(table=rows, key="train-epochs", description=f"{len(rows)}/{settings.epochs} epochs")
        logger.info("epoch %d: val score %.4f, %.0f img/s", stats.epoch, stats.val_score, stats.images_per_s)

    result = loop.train(Path(data_dir), settings, paths, resume=resume, on_epoch=on_epoch)
    return {
        "best_epoch": result.best_epoch,
        "best_score": None if math.isnan(result.best_score) else result.best_score,
        "model": str(result.model_path),
        "device": result.device,
        "world_size": result.world_size,
        "steps": result.steps,
        "weights_sha256": result.weights_digest,
        "epochs": [_round(e.row(timings=True)) for e in result.epochs],
    }
