"""Settings of the train stage as frozen dataclasses (params.yaml ``train``), free of torch.

Kept apart from the loop so that reading params (every CLI start) does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AugmentSettings:
    """Training-time augmentation (params.yaml ``train.augment``).

    Attributes:
        flip: Probability of a horizontal flip (pose labels are mirrored with it).
        scale_min: Smallest area fraction kept by the random resized crop (1.0 = off).
        jitter: Strength of brightness/contrast/saturation jitter (0 = off).
    """

    flip: float = 0.5
    scale_min: float = 0.7
    jitter: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip <= 1.0 or not 0.0 < self.scale_min <= 1.0 or self.jitter < 0:
            raise ValueError(
                f"train.augment needs 0 <= flip <= 1, 0 < scale_min <= 1, jitter >= 0; got {self}: fix params.yaml"
            )


@dataclass(frozen=True)
class TrainSettings:
    """Every number of a training run (params.yaml ``train``).

    Attributes:
        backbone: torchvision backbone (see ``model.BACKBONES``).
        weights: ``imagenet`` (from an installed package), a local .pth path, or ``none``.
        input_size: Side of the square model input, px.
        epochs: Passes over the training faces.
        steps_per_epoch: Cap on batches per epoch (0 = the whole split); for smoke runs.
        batch_size: Faces per step (per process under DDP).
        lr: Peak AdamW learning rate (after warm-up).
        weight_decay: AdamW weight decay.
        warmup_epochs: Linear warm-up length, in epochs (fractions allowed).
        label_smoothing: Cross-entropy label smoothing.
        class_weighting: ``none``, ``sqrt_inverse`` or ``inverse`` class weights per head.
        min_labels: A head is trained only for attributes with this many training labels.
        val_min_labels: A head counts toward an epoch's validation score only with this many
            validation labels (fewer give a figure too noisy to pick an epoch by; with no
            such head the score is nan and the latest epoch is kept).
        dropout: Dropout before the heads.
        grad_clip: Max gradient norm (0 = off).
        seed: Seeds model init, sampling and augmentation.
        workers: DataLoader worker processes.
        device: ``auto`` (CUDA when there is one), ``cuda``, ``cpu``.
        amp: bf16 autocast on CUDA (CPU always runs fp32).
        channels_last: NHWC memory format on CUDA.
        compile: ``torch.compile`` the model.
        gpu_decode: Decode JPEG batches on the GPU with nvJPEG instead of in CPU workers.
        min_side: Train only on faces at least this many px (None = all).
        source: Train only on ``tcs`` or ``imfdb`` (None = both).
        log_every: Log loss, img/s and ETA every this many steps.
        augment: Augmentation settings.
    """

    backbone: str = "mobilenet_v2"
    weights: str | None = "imagenet"
    input_size: int = 96
    epochs: int = 8
    steps_per_epoch: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    class_weighting: str = "sqrt_inverse"
    min_labels: int = 20
    val_min_labels: int = 10
    dropout: float = 0.2
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    gpu_decode: bool = False
    min_side: int | None = None
    source: str | None = None
    log_every: int = 20
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.input_size < 32 or self.lr <= 0:
            raise ValueError(
                f"train needs epochs >= 1, batch_size >= 1, input_size >= 32 and lr > 0 (got epochs={self.epochs}, "
                f"batch_size={self.batch_size}, input_size={self.input_size}, lr={self.lr}): fix params.yaml"
            )


@dataclass(frozen=True)
class TrainPaths:
    """Where a run writes: the model directory, DVC metrics and plots, checkpoints."""

    model_dir: Path = Path("models")
    metrics_file: Path = Path("metrics/train.json")
    plots_file: Path = Path("plots/train.csv")
    checkpoint_dir: Path = Path("data/checkpoints/train")
