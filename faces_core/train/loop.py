"""Training loop: AdamW, warm-up + cosine schedule, bf16 on CUDA, checkpoints, exact resume, DDP.

Shaped like torchvision's classification reference (``train_one_epoch``, ``evaluate``, a
checkpoint dict of plain values, ``--resume``), with what the notebook it replaces lacked:

* an atomic checkpoint every epoch (model, optimizer, scheduler, epoch, best score, RNG
  states); every epoch's randomness is derived from ``(seed, epoch)``, so a run resumed
  after a kill takes the same next step, to the bit on the same machine, as one that never
  stopped;
* the best model by validation score (mean macro-F1 over heads with enough labels) is
  written to ``model.pt`` + ``model.json`` as soon as it appears;
* the same code runs under ``torchrun`` with DistributedDataParallel (NCCL on GPUs, gloo on
  CPU); only rank 0 writes files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm

from faces_core.files import open_regular, write_atomic, write_json
from faces_core.inference.model import (
    ModelMeta,
    MultiTaskNet,
    build_model,
    class_weights_from_counts,
    multitask_loss,
    resolve_weights,
    save_model,
    torch_bytes,
)
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.dataset import (
    EncodedDataset,
    FaceDataset,
    FaceTable,
    GpuDecoder,
    collate_encoded,
    dataset_version,
    load_face_table,
)
from faces_core.train.metrics import accuracy, confusion_matrix, macro_f1
from faces_core.train.settings import TrainPaths, TrainSettings
from faces_core.train.workers import drop_inherited_thread_atexits

log = logging.getLogger(__name__)

CHECKPOINT_FILE: Final = "checkpoint.pt"
STEPS_FILE: Final = "steps.jsonl"


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


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto``: the GPU of this rank when CUDA is available, else the CPU."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA GPU is visible: set train.device to auto or cpu")
    return torch.device("cuda", local_rank)


def setup_distributed(preference: str) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed every RNG for one epoch of one rank; returns the sampler's generator."""
    value = (seed * 1_000_003 + epoch * 1_009 + rank) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def rng_state() -> dict[str, Any]:
    """RNG states as plain values (loadable with ``weights_only=True``)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, keys, pos, has_gauss, cached = state["numpy"]
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    np.random.set_state((version, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    return FaceTable(table.data, table.offsets, table.targets[:, columns], tuple(attributes), table.meta)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    # Serialised in memory first: a full disk is an OSError, not torch's RuntimeError.
    write_atomic(path, torch_bytes(obj), durable=True)


def _unwrap(model: nn.Module) -> MultiTaskNet:
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile wrapper
    assert isinstance(inner, MultiTaskNet)
    return inner


class _Batches:
    """Yields ``(images, targets)`` on the device from a CPU or GPU-decoding loader."""

    def __init__(
        self, loader: DataLoader[Any], device: torch.device, decoder: GpuDecoder | None, attributes: list[str]
    ) -> None:
        self.loader, self.device, self.decoder, self.attributes = loader, device, decoder, attributes

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        for images, targets in self.loader:
            if self.decoder is not None:
                yield self.decoder(images, targets, self.attributes)
            else:
                yield (
                    images.to(self.device, non_blocking=True),
                    targets.to(self.device, non_blocking=True),
                )


def make_loader(
    table: FaceTable,
    settings: TrainSettings,
    device: torch.device,
    train: bool,
    generator: torch.Generator | None = None,
    dist_info: DistInfo | None = None,
    epoch: int = 0,
) -> _Batches:
    """DataLoader over ``table``: shuffled (and sharded under DDP) for training, in order for eval."""
    augment = settings.augment if train else None
    gpu = settings.gpu_decode and device.type == "cuda"
    dataset: Any = EncodedDataset(table) if gpu else FaceDataset(table, settings.input_size, augment)
    sampler: Any
    if train and dist_info is not None and dist_info.world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=settings.seed
        )
        sampler.set_epoch(epoch)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    loader: DataLoader[Any] = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        drop_last=train and drops_last(len(sampler), settings.batch_size),
        generator=generator,
        collate_fn=collate_encoded if gpu else None,
        worker_init_fn=drop_inherited_thread_atexits,
    )
    decoder = GpuDecoder(settings.input_size, device, augment) if gpu else None
    return _Batches(loader, device, decoder, list(table.attributes))


def drops_last(per_rank: int, batch_size: int) -> bool:
    """Whether training drops a rank's last, short batch (decided on what *this rank* holds).

    A short last batch gives BatchNorm and the loss a noisy step, so it is dropped, but only
    when the rank has more than one full batch: deciding on the whole dataset (67 faces > 64)
    while each of two DDP ranks held 34 dropped every batch and trained nothing.
    """
    return per_rank > batch_size


def batches_per_rank(faces: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps one rank takes per epoch (``DistributedSampler`` pads ranks to equal size)."""
    per_rank = -(-faces // max(world_size, 1))
    if per_rank == 0:
        return 0
    return per_rank // batch_size if drops_last(per_rank, batch_size) else 1


class TrainInputError(ValueError):
    """The data or checkpoint cannot be trained from; the message says what to do (exit 2)."""


class NoTrainingStepsError(RuntimeError):
    """An epoch took no optimizer step: nothing was trained, so no model may be written."""


def _autocast(device: torch.device, enabled: bool) -> Any:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def train_one_epoch(
    model: nn.Module,
    batches: _Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: TrainSettings,
    class_weights: Mapping[str, torch.Tensor],
    epoch: int,
    on_step: Callable[[int, float], None] | None = None,
    show_progress: bool = True,
) -> tuple[float, int, float]:
    """One pass (or ``steps_per_epoch`` steps) over the training batches.

    Returns:
        (mean loss, images seen by this process, seconds).
    """
    model.train()
    attributes = batches.attributes
    limit = settings.steps_per_epoch or len(batches)
    total_loss, images, start = 0.0, 0, time.perf_counter()
    bar = tqdm(total=min(limit, len(batches)), desc=f"epoch {epoch}", disable=not show_progress, leave=False)
    device = next(model.parameters()).device
    for step, (x, y) in enumerate(batches):
        if step >= limit:
            break
        if settings.channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, settings.amp):
            logits = model(x)
            loss, _ = multitask_loss(logits, y, attributes, class_weights, settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        total_loss += value
        images += x.shape[0]
        if on_step is not None:
            on_step(step, value)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}", img_s=f"{images / (time.perf_counter() - start):.0f}")
        if settings.log_every and (step + 1) % settings.log_every == 0:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1) * (min(limit, len(batches)) - step - 1)
            log.info(
                "epoch %d step %d/%d loss %.4f %.0f img/s eta %.0fs",
                epoch,
                step + 1,
                min(limit, len(batches)),
                value,
                images / elapsed,
                eta,
            )
    bar.close()
    steps = min(limit, len(batches))
    if steps == 0 or images == 0:
        raise NoTrainingStepsError(
            f"epoch {epoch} took no training step ({len(batches)} batches of {settings.batch_size} on this process): "
            "lower train.batch_size or give it more training faces; the previous model is left as it was"
        )
    return total_loss / steps, images, time.perf_counter() - start


@torch.inference_mode()
def evaluate_batches(
    model: nn.Module,
    batches: _Batches,
    heads: Mapping[str, list[str]],
    settings: TrainSettings,
    class_weights: Mapping[str, torch.Tensor] | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean loss and one confusion matrix per head over ``batches`` (model in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    attributes = batches.attributes
    cms = {a: np.zeros((len(c), len(c)), dtype=np.int64) for a, c in heads.items()}
    total, n = 0.0, 0
    for x, y in batches:
        if settings.channels_last and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, settings.amp):
            logits = model(x)
            loss, _ = multitask_loss(logits, y, attributes, class_weights, 0.0)
        total += float(loss)
        n += 1
        labels = y.cpu().numpy()
        for j, attr in enumerate(attributes):
            if attr in logits:
                predicted = logits[attr].argmax(dim=1).cpu().numpy()
                cms[attr] += confusion_matrix(labels[:, j], predicted, len(heads[attr]))
    return total / max(n, 1), cms


def validation_score(cms: Mapping[str, np.ndarray], min_labels: int) -> float:
    """Mean macro-F1 over heads with at least ``min_labels`` validation labels (nan if none)."""
    scores = [macro_f1(cm) for cm in cms.values() if cm.sum() >= min_labels]
    return float(np.mean(scores)) if scores else float("nan")


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


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


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
    device = info.device
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
    class_weights = {a: w.to(device) for a, w in weights_cpu.items()}
    if info.is_main:
        log.info(
            "train: %d faces, val: %d faces, heads: %s, device %s x%d",
            len(train_table),
            len(val_table),
            ", ".join(f"{a}({int(counts[a].sum())})" for a in attributes),
            device,
            info.world_size,
        )

    seed_epoch(settings.seed, -1)  # model init
    meta = ModelMeta(
        backbone=settings.backbone,
        input_size=settings.input_size,
        attributes=heads,
        dropout=settings.dropout,
        data_version=dataset_version(data_dir),
        params=_plain(asdict(settings)),
    )
    net = build_model(meta, resolve_weights(settings.weights, settings.backbone)).to(device)
    if settings.channels_last and device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    batches_per_epoch = batches_per_rank(len(train_table), settings.batch_size, info.world_size)
    steps_per_epoch = min(settings.steps_per_epoch or batches_per_epoch, batches_per_epoch)
    scheduler = warmup_cosine(
        optimizer, int(settings.warmup_epochs * steps_per_epoch), settings.epochs * steps_per_epoch
    )

    checkpoint_path = paths.checkpoint_dir / CHECKPOINT_FILE
    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    if resume and checkpoint_path.exists():
        state = _read_checkpoint(checkpoint_path)
        if state["heads"] != heads or state["backbone"] != settings.backbone:
            raise TrainInputError(
                f"{checkpoint_path} was made for backbone {state['backbone']} with heads {list(state['heads'])}; "
                "this run differs: delete the checkpoint or start without --resume"
            )
        try:  # a checkpoint that does not fit ends the run with one line: it is never trained on half-loaded
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            start_epoch, best_score, best_epoch = int(state["epoch"]) + 1, state["best_score"], state["best_epoch"]
            history = [EpochStats(**h) for h in state["history"]]
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise TrainInputError(
                f"{checkpoint_path} does not fit this run ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): "
                "delete it or start without --resume"
            ) from exc
        if info.is_main:
            log.info("resuming after epoch %d from %s (best score %.4f)", state["epoch"], checkpoint_path, best_score)
    elif resume and info.is_main:
        log.info("no checkpoint at %s: starting from scratch", checkpoint_path)

    model: nn.Module = net
    if info.world_size > 1:
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if settings.compile:
        model = torch.compile(model)  # type: ignore[assignment]

    steps_log = paths.checkpoint_dir / STEPS_FILE
    if info.is_main:
        _truncate_steps(steps_log, start_epoch)
    val_batches = make_loader(val_table, settings, device, train=False) if len(val_table) else None
    steps_taken = 0
    for epoch in range(start_epoch, settings.epochs):
        generator = seed_epoch(settings.seed, epoch, info.rank)
        batches = make_loader(train_table, settings, device, True, generator, info, epoch)
        on_step = _step_logger(steps_log, epoch) if info.is_main else None
        train_loss, images, seconds = train_one_epoch(
            model, batches, optimizer, scheduler, settings, class_weights, epoch, on_step, show_progress=info.is_main
        )
        steps_taken += min(settings.steps_per_epoch or len(batches), len(batches))
        if info.world_size > 1:
            dist.barrier()
        if not info.is_main:
            continue
        val_loss, cms = (
            evaluate_batches(_unwrap(model), val_batches, heads, settings, class_weights)
            if val_batches is not None
            else (float("nan"), {})
        )
        score = validation_score(cms, settings.val_min_labels)
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_score=score,
            lr=float(scheduler.get_last_lr()[0]),
            images_per_s=images * info.world_size / max(seconds, 1e-9),
            seconds=seconds,
            val_accuracy={a: accuracy(cm) for a, cm in cms.items()},
            val_macro_f1={a: macro_f1(cm) for a, cm in cms.items()},
        )
        history.append(stats)
        # No validation data: the latest epoch is the best we can tell.
        improved = math.isnan(score) or score > best_score
        if improved:
            best_score, best_epoch = score, epoch
            save_model(_unwrap(model), _final_meta(meta, stats, weights_digest(_unwrap(model))), paths.model_dir)
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val score %.4f%s, %.0f img/s",
            epoch,
            train_loss,
            val_loss,
            score,
            " (best)" if improved else "",
            stats.images_per_s,
        )
        _atomic_torch_save(
            {
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": None,  # bf16 autocast needs no loss scaling
                "epoch": epoch,
                "best_score": best_score,
                "best_epoch": best_epoch,
                "rng": rng_state(),
                "heads": heads,
                "backbone": settings.backbone,
                "history": [asdict(h) for h in history],
                "settings": _plain(asdict(settings)),
            },
            checkpoint_path,
        )
        _write_plots(paths.plots_file, history)
        write_json(_metrics(history, best_epoch, info), paths.metrics_file)
        if on_epoch is not None:
            on_epoch(stats)
    if info.world_size > 1:
        dist.barrier()
    digest = weights_digest(_unwrap(model))
    # Every rank says what it did: under DDP equal digests show the ranks stayed in step.
    log.info("rank %d of %d: %d optimizer steps, weights sha256 %s", info.rank, info.world_size, steps_taken, digest)
    return TrainResult(
        best_epoch=best_epoch,
        best_score=best_score,
        epochs=history,
        model_path=paths.model_dir / "model.pt" if info.is_main else None,
        device=str(device),
        world_size=info.world_size,
        weights_digest=digest,
        steps=steps_taken,
    )


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "best_score", "best_epoch", "heads")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, or a one-line TrainInputError (truncated, garbage, foreign)."""
    try:
        with open_regular(path) as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, a FIFO, a refused pickle: all say the same
        raise TrainInputError(
            f"{path} is not a usable checkpoint ({type(exc).__name__}): delete it (training starts over) or "
            "start without --resume"
        ) from exc
    missing = [k for k in (*_CHECKPOINT_KEYS, "backbone", "history") if not isinstance(state, dict) or k not in state]
    if missing:
        raise TrainInputError(f"{path} lacks {missing}: delete it or start without --resume")
    return state


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


def _metrics(history: list[EpochStats], best_epoch: int, info: DistInfo) -> dict[str, Any]:
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
        "world_size": info.world_size,
    }


def _truncate_steps(path: Path, start_epoch: int) -> None:
    """Drop step records of epochs that will be (re)run, so the log has each step once."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] < start_epoch]
    path.write_text("".join(line + "\n" for line in kept))


def _step_logger(path: Path, epoch: int) -> Callable[[int, float], None]:
    path.parent.mkdir(parents=True, exist_ok=True)

    def log_step(step: int, loss: float) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps({"epoch": epoch, "step": step, "loss": loss}) + "\n")

    return log_step
