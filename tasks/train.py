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

    if settings.recipe == "embedding":
        return train_embedding_heads(data_dir, settings, paths)
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


def train_embedding_heads(data_dir: str, settings: TrainSettings, paths: TrainPaths) -> dict[str, Any]:
    """The embedding recipe (``train.recipe: embedding``), with a ``train-heads`` table artifact
    of each head's cross-validated figures against its floor."""
    from faces_core.train import heads

    logger = get_run_logger()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if last[0] == 0.0 and done < total:
            logger.info("face descriptors: %d of %d faces to compute (%d cached)", total - done, total, done)
        if done == total or done / total - last[0] >= 0.1:
            last[0] = done / total
            logger.info("face descriptors: %d/%d", done, total)

    run = heads.train_heads(Path(data_dir), settings, paths, progress)
    rows = [
        {
            "head": attribute,
            "cv_macro_f1": r["macro_f1"]["pooled"],
            "std": r["macro_f1"].get("std"),
            "floor_macro_f1": r["floor_macro_f1"]["pooled"],
            "cv_accuracy": r["accuracy"]["pooled"],
            "ece_after": r["ece_after"],
            "published": r["reliable"],
        }
        for attribute, r in run.heads.items()
    ]
    create_table_artifact(table=rows, key="train-heads", description=f"{run.folds}-fold CV over {run.groups} people")
    return {
        "recipe": "embedding",
        "best_epoch": None,
        "best_score": None,
        "model": str(run.model_path),
        "device": "cpu",
        "world_size": 1,
        "steps": 0,
        "weights_sha256": run.version,
        "epochs": [],
        "heads": rows,
        "seconds": run.seconds,
    }
