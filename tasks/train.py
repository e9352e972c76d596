"""Prefect task of the train flow: one task runs the whole training loop and reports per epoch."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from faces_core import objstore
from faces_core.train import loop
from faces_core.train.settings import TrainPaths, TrainSettings


def _round(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(data_dir: str, settings: TrainSettings, paths: TrainPaths, resume: bool) -> dict[str, Any]:
    """Train, updating the ``train-epochs`` table artifact after every epoch."""
    logger = get_run_logger()
    rows: list[dict[str, Any]] = []

    data_dir = fetch_inputs(data_dir, paths, resume)

    def on_epoch(stats: loop.EpochStats) -> None:
        if (checkpoints := paths.url("checkpoint_dir")) is not None:
            # A worker on another machine resumes from here after this one is lost.
            objstore.publish(paths.checkpoint_dir, checkpoints, f"epoch-{stats.epoch:04d}")
        rows.append(_round(stats.row(timings=True)))
        create_table_artifact(table=rows, key="train-epochs", description=f"{len(rows)}/{settings.epochs} epochs")
        logger.info("epoch %d: val score %.4f, %.0f img/s", stats.epoch, stats.val_score, stats.images_per_s)

    if settings.recipe == "embedding":
        return publish_model(train_embedding_heads(data_dir, settings, paths), paths)
    result = loop.train(Path(data_dir), settings, paths, resume=resume, on_epoch=on_epoch)
    return publish_model(
        {
            "best_epoch": result.best_epoch,
            "best_score": None if math.isnan(result.best_score) else result.best_score,
            "model": str(result.model_path),
            "device": result.device,
            "world_size": result.world_size,
            "steps": result.steps,
            "weights_sha256": result.weights_digest,
            "epochs": [_round(e.row(timings=True)) for e in result.epochs],
        },
        paths,
    )


def fetch_inputs(data_dir: str, paths: TrainPaths, resume: bool) -> str:
    """The local folder of the data, fetched first when it is a URL (on the worker that trains);
    with ``resume``, the checkpoints published to a URL come back too."""
    if objstore.is_remote(data_dir):
        get_run_logger().info("fetching %s", objstore.shown(data_dir))
        data_dir = str(objstore.fetch(data_dir))
    checkpoints = paths.url("checkpoint_dir")
    if checkpoints is not None and resume:
        objstore.fetch(checkpoints, paths.checkpoint_dir, missing_ok=True)
    return data_dir


def publish_model(result: dict[str, Any], paths: TrainPaths) -> dict[str, Any]:
    """Commit the model folder to its URL when ``model_dir`` is one (manifest written last)."""
    url = paths.url("model_dir")
    if url is not None:
        run_id = re.sub(r"[^A-Za-z0-9._-]", "-", str(result["weights_sha256"]))[:32]
        objstore.publish(paths.model_dir, url, run_id)
        result = {**result, "model": f"{objstore.shown(url)}/{Path(str(result['model'])).name}"}
    return result


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
