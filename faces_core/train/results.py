"""What a training run reports and writes besides checkpoints: per-epoch stats, the result,
plots/train.csv, metrics/train.json, the best model's metadata, and the errors that end a run."""

from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from faces_core.inference.model import ModelMeta


class TrainInputError(ValueError):
    """The data or checkpoint cannot be trained from; the message says what to do (exit 2)."""


class NoTrainingStepsError(RuntimeError):
    """An epoch took no optimizer step: nothing was trained, so no model may be written."""


@dataclass
class EpochStats:
    """One row of plots/train.csv and of the per-epoch Prefect table."""

    epoch: int
    train_loss: float
    val_loss: float
    val_score: float
    lr: float
    images_per_s: float
    seconds: float
    val_accuracy: dict[str, float] = field(default_factory=dict)
    val_macro_f1: dict[str, float] = field(default_factory=dict)

    def row(self, timings: bool = False) -> dict[str, Any]:
        """Flat dict for CSV and table artifacts.

        Timings (``images_per_s``, ``seconds``) only with ``timings=True`` (the Prefect table
        and the logs): plots/train.csv is a DVC output committed to git, and a wall-clock figure
        there would make every identical retrain a change.
        """
        flat: dict[str, Any] = {
            k: v
            for k, v in asdict(self).items()
            if not isinstance(v, dict) and (timings or k not in ("images_per_s", "seconds"))
        }
        flat.update({f"{a}_acc": v for a, v in self.val_accuracy.items()})
        flat.update({f"{a}_f1": v for a, v in self.val_macro_f1.items()})
        return flat


@dataclass
class TrainResult:
    """What a finished run reports (rank 0)."""

    best_epoch: int
    best_score: float
    epochs: list[EpochStats]
    model_path: Path | None
    device: str
    world_size: int
    weights_digest: str = ""
    steps: int = 0
    """Optimizer steps this process took in this run (every rank takes the same number)."""


def weights_digest(model: nn.Module) -> str:
    """sha256 of every learned parameter, in order: equal digests mean equal weights.

    Buffers (BatchNorm running statistics) are left out: under DDP each rank updates them
    from its own batches and rank 0's are broadcast at the next forward and saved.
    """
    digest = hashlib.sha256()
    for name, tensor in model.named_parameters():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Settings as JSON-friendly values (Paths and tuples become strings and lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _write_plots(path: Path, epochs: list[EpochStats]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [e.row() for e in epochs]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _final_meta(meta: ModelMeta, stats: EpochStats, digest: str) -> ModelMeta:
    metrics = {
        "epoch": stats.epoch,
        "val_score": _clean(stats.val_score),
        "val_accuracy": {a: _clean(v) for a, v in stats.val_accuracy.items()},
        "val_macro_f1": {a: _clean(v) for a, v in stats.val_macro_f1.items()},
    }
    # Named by content, not by clock: the same data and training give the same model files
    # (DVC sees no change), and different weights always get a different version.
    version = f"{meta.backbone}-{meta.data_version[:12]}-e{stats.epoch}-{digest[:8]}"
    return ModelMeta(**{**asdict(meta), "metrics": metrics, "version": version})


def _metrics(history: list[EpochStats], best_epoch: int, world_size: int) -> dict[str, Any]:
    """metrics/train.json: headline figures only (per-head validation figures are in model.json
    and plots/train.csv; nested here they made ``dvc exp show`` unreadably wide)."""
    best = next((h for h in history if h.epoch == best_epoch), history[-1])
    last = history[-1]
    return {
        "best_epoch": best_epoch,
        "epochs": last.epoch + 1,
        "val_score": _clean(best.val_score),
        "val_loss": _clean(best.val_loss),
        "train_loss": _clean(last.train_loss),
        "world_size": world_size,
    }
