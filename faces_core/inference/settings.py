"""Settings of the evaluate and predict steps as frozen dataclasses, free of torch.

Kept apart from :mod:`faces_core.train.evaluate` and :mod:`faces_core.inference.predict` (like
:mod:`faces_core.train.settings`) so that reading params.yaml on every CLI start does not
import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final


@dataclass(frozen=True)
class DetectSettings:
    """How the detector runs (``annotate.detect`` in params.yaml).

    Attributes:
        min_face_size: Smallest face searched for, in pixels of the capped image.
        thresholds: Score thresholds of MTCNN's three stages (P-, R-, O-net).
        factor: Scale step of the image pyramid.
        min_confidence: Detections below this final score are dropped.
        max_side: Long side images are shrunk to before detection (larger ones cost time and
            memory for faces the cascade finds at this size anyway).
        pad_multiple: Canvas sides are rounded up to this many pixels; images with the same
            canvas share a batch. Larger values mean fewer, fuller batches and more padding.
        batch_size: Images per detector forward pass.
        device: ``auto`` (CUDA when present), ``cuda`` or ``cpu``.
    """

    min_face_size: int = 40
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    min_confidence: float = 0.9
    max_side: int = 1024
    pad_multiple: int = 64
    batch_size: int = 16
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if len(self.thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"annotate.detect.thresholds must be three numbers in [0, 1], got {self.thresholds}")
        if self.min_face_size < 12 or self.max_side < self.min_face_size or self.pad_multiple < 1:
            raise ValueError(
                "annotate.detect needs min_face_size >= 12 (MTCNN's smallest window), max_side >= min_face_size "
                f"and pad_multiple >= 1; got {self}"
            )
        if not 0.0 < self.factor < 1.0 or self.batch_size < 1:
            raise ValueError(f"annotate.detect needs 0 < factor < 1 and batch_size >= 1; got {self}")
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"annotate.detect.device must be auto, cuda or cpu; got {self.device!r}")


SPLITS: Final = ("train", "val", "test", "all")
"""``all`` scores every face of the data directory (a separately ingested dataset, say)."""

DEVICES: Final = ("auto", "cuda", "cpu")


class EvaluateInputError(ValueError):
    """The model, data directory, split or a setting cannot be used; the message says what to do."""


@dataclass(frozen=True)
class EvaluateSettings:
    """How to score (params.yaml ``evaluate``).

    Attributes:
        split: ``train``, ``val``, ``test`` or ``all`` faces of the data directory.
        min_labels: An attribute with fewer labels in the evaluated faces is reported as
            ``too_few_labels`` instead of with metrics.
        batch_size: Faces per forward pass.
        workers: DataLoader processes decoding crops (0 = in the main process).
        device: ``auto`` (CUDA when present), ``cuda`` or ``cpu``. CUDA runs bf16 autocast.
        max_model_bytes: A larger ``model.pt`` is refused before it is read.
    """

    split: str = "test"
    min_labels: int = 20
    batch_size: int = 128
    workers: int = 2
    device: str = "auto"
    max_model_bytes: int = 2 * 1024**3

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise EvaluateInputError(f"evaluate.split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        if self.device not in DEVICES:
            raise EvaluateInputError(f"evaluate.device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.min_labels < 1 or self.batch_size < 1 or self.workers < 0:
            raise EvaluateInputError(
                f"evaluate needs min_labels >= 1, batch_size >= 1 and workers >= 0; got min_labels={self.min_labels}, "
                f"batch_size={self.batch_size}, workers={self.workers}: fix params.yaml or the flags"
            )


@dataclass(frozen=True)
class EvaluatePaths:
    """What an evaluation reads (model, data) and writes (metrics, details, plots).

    ``metrics_file`` holds the headline figures DVC shows as metrics; ``details_file`` (default:
    ``<metrics stem>_details.json`` beside it) the whole report: per class, size bucket and
    source, model and data.
    """

    model_dir: Path = Path("models")
    data_dir: Path = Path("data/processed")
    metrics_file: Path = Path("metrics/eval.json")
    plots_dir: Path = Path("plots/confusion")
    details_file: Path | None = None
    remote: tuple[tuple[str, str], ...] = ()
    """(field, URL) of the folders given as URLs: the field then holds the URL's local mirror
    (:func:`faces_core.objstore.local`), fetched by the evaluate task before it reads."""

    def url(self, name: str) -> str | None:
        """The URL a folder field stands for, or None when it is a local path."""
        return dict(self.remote).get(name)

    @property
    def details_path(self) -> Path:
        """Where the full report goes."""
        if self.details_file is not None:
            return self.details_file
        return self.metrics_file.with_name(f"{self.metrics_file.stem}_details.json")


@dataclass(frozen=True)
class PredictSettings:
    """How ``faces predict`` loads inputs and runs the model (params.yaml ``predict``).

    Attributes:
        device: ``auto`` (CUDA when present), ``cuda`` or ``cpu``. CUDA runs bf16 autocast.
        batch_size: Images per forward pass (and inputs loaded at a time).
        timeout_s: Connect and per-read timeout for URLs, in seconds.
        retries: Extra attempts per URL after timeouts, connection errors, 5xx and 429.
        max_bytes: Largest accepted image, downloaded or local (``too_large`` beyond).
        max_image_pixels: Larger images are rejected from their header (``decompression_bomb``).
        max_model_bytes: A larger ``model.pt`` is refused before it is read.
        allow_private_hosts: Fetch URLs of loopback, private and link-local addresses (ingest's
            ``download.allow_private_hosts``: off, so ``faces predict http://169.254.169.254/``
            cannot probe the network it runs in).
        attempt_timeout_s: Total deadline of one attempt (ingest's ``download.attempt_timeout_s``).
        url_timeout_s: Total deadline of one URL, every attempt included (``download.url_timeout_s``):
            a server dripping a byte at a time ends as ``timeout``.
    """

    device: str = "auto"
    batch_size: int = 32
    timeout_s: float = 10.0
    retries: int = 1
    max_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 120_000_000
    max_model_bytes: int = 2 * 1024**3
    allow_private_hosts: bool = False
    attempt_timeout_s: float = 60.0
    url_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise EvaluateInputError(f"predict.device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        if self.batch_size < 1 or self.timeout_s <= 0 or self.retries < 0 or self.max_bytes < 1:
            raise EvaluateInputError(
                f"predict needs batch_size >= 1, timeout_s > 0, retries >= 0 and max_bytes >= 1; got {self}: "
                "fix params.yaml or the flags"
            )
