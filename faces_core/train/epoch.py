"""One epoch: the data loaders (sharded under DDP, CPU or GPU decoding), a training pass, evaluation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from tqdm import tqdm

from faces_core.inference.model import multitask_loss
from faces_core.train.dataset import EncodedDataset, FaceDataset, FaceTable, GpuDecoder, collate_encoded
from faces_core.train.distributed import DistInfo
from faces_core.train.metrics import confusion_matrix, macro_f1
from faces_core.train.results import NoTrainingStepsError
from faces_core.train.settings import TrainSettings
from faces_core.train.workers import drop_inherited_thread_atexits

log = logging.getLogger(__name__)


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
    steps = min(settings.steps_per_epoch or len(batches), len(batches))
    total_loss, images, start = 0.0, 0, time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not show_progress, leave=False)
    device = next(model.parameters()).device
    for step, (x, y) in enumerate(batches):
        if step >= steps:
            break
        value = _step(model, x, y, optimizer, scheduler, settings, class_weights, batches.attributes, device)
        total_loss += value
        images += x.shape[0]
        if on_step is not None:
            on_step(step, value)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}", img_s=f"{images / (time.perf_counter() - start):.0f}")
        if settings.log_every and (step + 1) % settings.log_every == 0:
            _log_step(epoch, step, steps, value, images, time.perf_counter() - start)
    bar.close()
    if steps == 0 or images == 0:
        raise NoTrainingStepsError(
            f"epoch {epoch} took no training step ({len(batches)} batches of {settings.batch_size} on this process): "
            "lower train.batch_size or give it more training faces; the previous model is left as it was"
        )
    return total_loss / steps, images, time.perf_counter() - start


def _step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: TrainSettings,
    class_weights: Mapping[str, torch.Tensor],
    attributes: list[str],
    device: torch.device,
) -> float:
    """One optimizer step on the batch ``(x, y)``; its loss."""
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
    return float(loss.detach())


def _log_step(epoch: int, step: int, steps: int, loss: float, images: int, elapsed: float) -> None:
    eta = elapsed / (step + 1) * (steps - step - 1)
    log.info("epoch %d step %d/%d loss %.4f %.0f img/s eta %.0fs", epoch, step + 1, steps, loss, images / elapsed, eta)


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
