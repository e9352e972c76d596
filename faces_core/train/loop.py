"""Training loop: AdamW, warm-up + cosine schedule, bf16 on CUDA, checkpoints, exact resume, DDP.

Shaped like torchvision's classification reference (``train_one_epoch``, ``evaluate``, a
checkpoint dict of plain values, ``--resume``), with what the notebook it replaces lacked:

* an atomic checkpoint every epoch (model, optimizer, scheduler, epoch, best score, RNG
  states); every epoch's randomness is derived from ``(seed, epoch)``, so a run resumed
  after a kill takes the same next step, to the bit on the same machine, as one that never
  stopped (:mod:`faces_core.train.checkpoint`);
* the best model by validation score (mean macro-F1 over heads with enough labels) is
  written to ``model.pt`` + ``model.json`` as soon as it appears;
* the same code runs under ``torchrun`` with DistributedDataParallel (NCCL on GPUs, gloo on
  CPU); only rank 0 writes files (:mod:`faces_core.train.distributed`).

:func:`train` wires the steps: load the data, build the model and optimiser, resume, then
per epoch train (:mod:`faces_core.train.epoch`), validate and record
(:mod:`faces_core.train.results`, the checkpoint), and report.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from faces_core.files import write_json
from faces_core.inference.model import (
    ModelMeta,
    build_model,
    class_weights_from_counts,
    resolve_weights,
    save_model,
)
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.checkpoint import (
    CHECKPOINT_FILE,
    STEPS_FILE,
    Progress,
    _step_logger,
    _truncate_steps,
    resume_from,
    rng_state,
    save_checkpoint,
    seed_epoch,
    set_rng_state,
)
from faces_core.train.dataset import FaceTable, dataset_version, load_face_table
from faces_core.train.distributed import DistInfo, _unwrap, pick_device, setup_distributed
from faces_core.train.epoch import (
    _Batches,
    batches_per_rank,
    drops_last,
    evaluate_batches,
    make_loader,
    train_one_epoch,
    validation_score,
)
from faces_core.train.metrics import accuracy, macro_f1
from faces_core.train.results import (
    EpochStats,
    NoTrainingStepsError,
    TrainInputError,
    TrainResult,
    _final_meta,
    _metrics,
    _plain,
    _write_plots,
    weights_digest,
)
from faces_core.train.settings import TrainPaths, TrainSettings

__all__ = [  # what callers import from here; the names live in the step modules
    "CHECKPOINT_FILE",
    "STEPS_FILE",
    "DistInfo",
    "EpochStats",
    "NoTrainingStepsError",
    "TrainInputError",
    "TrainResult",
    "_Batches",
    "_plain",
    "batches_per_rank",
    "drops_last",
    "evaluate_batches",
    "make_loader",
    "pick_device",
    "restrict",
    "rng_state",
    "select_heads",
    "set_rng_state",
    "setup_distributed",
    "train",
    "train_one_epoch",
    "validation_score",
    "warmup_cosine",
    "weights_digest",
]

log = logging.getLogger(__name__)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def select_heads(table: FaceTable, min_labels: int) -> dict[str, list[str]]:
    """Attributes with at least ``min_labels`` training labels in two or more classes."""
    heads = {}
    for attr, counts in table.label_counts().items():
        if counts.sum() >= min_labels and (counts > 0).sum() >= 2:
            heads[attr] = list(ATTRIBUTES[attr])
        else:
            log.info("no head for %s: %d labels in %d classes", attr, counts.sum(), (counts > 0).sum())
    if not heads:
        raise TrainInputError(
            f"no attribute has {min_labels} training labels in 2+ classes: ingest more data or lower train.min_labels"
        )
    return heads


def restrict(table: FaceTable, attributes: list[str]) -> FaceTable:
    """The same faces with targets for ``attributes`` only, in that order."""
    columns = [table.attributes.index(a) for a in attributes]
    return FaceTable(table.data, table.offsets, table.targets[:, columns], tuple(attributes), table.meta, table.boxes)


@dataclass
class _Data:
    """The faces a run trains on: the heads, both splits restricted to them, the class weights."""

    heads: dict[str, list[str]]
    train: FaceTable
    val: FaceTable
    class_weights: dict[str, torch.Tensor]


@dataclass
class _Run:
    """What every epoch of a run uses: this process's place, the data, the model and its optimiser."""

    info: DistInfo
    settings: TrainSettings
    paths: TrainPaths
    data: _Data
    meta: ModelMeta
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    model: nn.Module
    """``net``, wrapped for DDP and ``torch.compile`` once a checkpoint is loaded into it."""


def train(
    data_dir: str | os.PathLike[str],
    settings: TrainSettings,
    paths: TrainPaths,
    resume: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train a multi-task model on the ``train`` split of an ingest output, validating on ``val``.

    Args:
        data_dir: Ingest ``out_dir`` (holds ``faces/``).
        settings: Hyper-parameters.
        paths: Output locations.
        resume: Continue from ``paths.checkpoint_dir/checkpoint.pt`` when it exists.
        on_epoch: Called on rank 0 after each epoch (Prefect table artifact, say).

    Returns:
        Best epoch, its score, every epoch's stats and the saved model path.
    """
    info = setup_distributed(settings.device)
    run = _build(data_dir, _load_data(data_dir, settings, info), settings, paths, info)
    progress = (
        resume_from(
            paths.checkpoint_dir / CHECKPOINT_FILE,
            run.net,
            run.optimizer,
            run.scheduler,
            run.data.heads,
            settings.backbone,
            info.is_main,
        )
        if resume
        else Progress()
    )
    run.model = _wrap(run.net, settings, info)
    steps_log = paths.checkpoint_dir / STEPS_FILE
    if info.is_main:
        _truncate_steps(steps_log, progress.start_epoch)
    val_batches = make_loader(run.data.val, settings, info.device, train=False) if len(run.data.val) else None
    steps_taken = 0
    for epoch in range(progress.start_epoch, settings.epochs):
        train_loss, images, seconds, steps = _train_epoch(run, epoch, steps_log)
        steps_taken += steps
        if info.world_size > 1:
            dist.barrier()
        if not info.is_main:
            continue
        stats = _validate(run, epoch, train_loss, images, seconds, val_batches)
        _record(run, stats, progress)
        if on_epoch is not None:
            on_epoch(stats)
    return _finish(run, progress, steps_taken)


def _load_data(data_dir: str | os.PathLike[str], settings: TrainSettings, info: DistInfo) -> _Data:
    """Both splits with targets for the heads that have enough labels, and the class weights."""
    full = load_face_table(data_dir, split="train", source=settings.source, min_side=settings.min_side)
    if len(full) == 0:
        raise TrainInputError(
            f"no training faces in {data_dir} (split=train): run `faces ingest` first or check filters"
        )
    heads = select_heads(full, settings.min_labels)
    attributes = list(heads)
    train_table = restrict(full, attributes)
    val_full = load_face_table(data_dir, split="val", source=settings.source, min_side=settings.min_side)
    val_table = restrict(val_full, attributes)
    counts = train_table.label_counts()
    weights_cpu = class_weights_from_counts({a: counts[a].tolist() for a in attributes}, settings.class_weighting)
    class_weights = {a: w.to(info.device) for a, w in weights_cpu.items()}
    if info.is_main:
        log.info(
            "train: %d faces, val: %d faces, heads: %s, device %s x%d",
            len(train_table),
            len(val_table),
            ", ".join(f"{a}({int(counts[a].sum())})" for a in attributes),
            info.device,
            info.world_size,
        )
    return _Data(heads, train_table, val_table, class_weights)


def _build(
    data_dir: str | os.PathLike[str], data: _Data, settings: TrainSettings, paths: TrainPaths, info: DistInfo
) -> _Run:
    """The model (seeded), AdamW and the warm-up + cosine schedule over the run's steps."""
    seed_epoch(settings.seed, -1)  # model init
    meta = ModelMeta(
        backbone=settings.backbone,
        input_size=settings.input_size,
        attributes=data.heads,
        dropout=settings.dropout,
        data_version=dataset_version(data_dir),
        params=_plain(asdict(settings)),
    )
    net = build_model(meta, resolve_weights(settings.weights, settings.backbone)).to(info.device)
    if settings.channels_last and info.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    batches_per_epoch = batches_per_rank(len(data.train), settings.batch_size, info.world_size)
    steps_per_epoch = min(settings.steps_per_epoch or batches_per_epoch, batches_per_epoch)
    scheduler = warmup_cosine(
        optimizer, int(settings.warmup_epochs * steps_per_epoch), settings.epochs * steps_per_epoch
    )
    return _Run(info, settings, paths, data, meta, net, optimizer, scheduler, net)


def _wrap(net: nn.Module, settings: TrainSettings, info: DistInfo) -> nn.Module:
    """``net`` in DistributedDataParallel under ``torchrun``, compiled when asked."""
    model: nn.Module = net
    if info.world_size > 1:
        model = DistributedDataParallel(net, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if settings.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def _train_epoch(run: _Run, epoch: int, steps_log: Path) -> tuple[float, int, float, int]:
    """One epoch's training pass on this rank: (mean loss, images, seconds, optimizer steps)."""
    settings, info = run.settings, run.info
    generator = seed_epoch(settings.seed, epoch, info.rank)
    batches = make_loader(run.data.train, settings, info.device, True, generator, info, epoch)
    on_step = _step_logger(steps_log, epoch) if info.is_main else None
    train_loss, images, seconds = train_one_epoch(
        run.model,
        batches,
        run.optimizer,
        run.scheduler,
        settings,
        run.data.class_weights,
        epoch,
        on_step,
        show_progress=info.is_main,
    )
    return train_loss, images, seconds, min(settings.steps_per_epoch or len(batches), len(batches))


def _validate(
    run: _Run, epoch: int, train_loss: float, images: int, seconds: float, val_batches: _Batches | None
) -> EpochStats:
    """The epoch's stats, with the loss, score and per-head figures on the validation split."""
    val_loss, cms = (
        evaluate_batches(_unwrap(run.model), val_batches, run.data.heads, run.settings, run.data.class_weights)
        if val_batches is not None
        else (float("nan"), {})
    )
    return EpochStats(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        val_score=validation_score(cms, run.settings.val_min_labels),
        lr=float(run.scheduler.get_last_lr()[0]),
        images_per_s=images * run.info.world_size / max(seconds, 1e-9),
        seconds=seconds,
        val_accuracy={a: accuracy(cm) for a, cm in cms.items()},
        val_macro_f1={a: macro_f1(cm) for a, cm in cms.items()},
    )


def _record(run: _Run, stats: EpochStats, progress: Progress) -> None:
    """Rank 0 after an epoch: the model when it is the best yet, the checkpoint, plots and metrics."""
    paths = run.paths
    progress.history.append(stats)
    # No validation data: the latest epoch is the best we can tell.
    improved = math.isnan(stats.val_score) or stats.val_score > progress.best_score
    if improved:
        progress.best_score, progress.best_epoch = stats.val_score, stats.epoch
        net = _unwrap(run.model)
        save_model(net, _final_meta(run.meta, stats, weights_digest(net)), paths.model_dir)
    log.info(
        "epoch %d: train loss %.4f, val loss %.4f, val score %.4f%s, %.0f img/s",
        stats.epoch,
        stats.train_loss,
        stats.val_loss,
        stats.val_score,
        " (best)" if improved else "",
        stats.images_per_s,
    )
    save_checkpoint(
        paths.checkpoint_dir / CHECKPOINT_FILE,
        _unwrap(run.model),
        run.optimizer,
        run.scheduler,
        stats.epoch,
        progress,
        run.data.heads,
        run.settings,
    )
    _write_plots(paths.plots_file, progress.history)
    write_json(_metrics(progress.history, progress.best_epoch, run.info.world_size), paths.metrics_file)


def _finish(run: _Run, progress: Progress, steps_taken: int) -> TrainResult:
    """Wait for every rank, then report what this process did."""
    info = run.info
    if info.world_size > 1:
        dist.barrier()
    digest = weights_digest(_unwrap(run.model))
    # Every rank says what it did: under DDP equal digests show the ranks stayed in step.
    log.info("rank %d of %d: %d optimizer steps, weights sha256 %s", info.rank, info.world_size, steps_taken, digest)
    return TrainResult(
        best_epoch=progress.best_epoch,
        best_score=progress.best_score,
        epochs=progress.history,
        model_path=run.paths.model_dir / "model.pt" if info.is_main else None,
        device=str(info.device),
        world_size=info.world_size,
        weights_digest=digest,
        steps=steps_taken,
    )
