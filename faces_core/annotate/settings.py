"""Settings of the annotate stage as frozen dataclasses (params.yaml ``annotate``), free of torch.

Kept apart from the detector and the pipeline so that reading params (every CLI start, every
DVC stage) imports neither torch nor facenet-pytorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from faces_core.inference.settings import DetectSettings as DetectSettings  # the detector's own settings


@dataclass(frozen=True, slots=True)
class ReadSettings:
    """How files are decoded (``annotate`` section of params.yaml).

    Attributes:
        max_side: Long-side cap of every frame (the detector's ``max_side``).
        max_image_pixels: Larger images are ``decompression_bomb`` (from the header).
        max_image_bytes: A larger image file is ``too_large``, never decoded (videos are
            read frame by frame and have no byte cap).
        video_every_s: Seconds between sampled video frames.
        video_max_frames: At most this many frames per video (a long film is sampled at its start).
    """

    max_side: int = 1024
    max_image_pixels: int = 120_000_000
    max_image_bytes: int = 200 * 1024**2
    video_every_s: float = 1.0
    video_max_frames: int = 600

    def __post_init__(self) -> None:
        if self.video_every_s <= 0 or self.video_max_frames < 1 or self.max_side < 1:
            raise ValueError(f"annotate needs video_every_s > 0, video_max_frames >= 1, max_side >= 1; got {self}")


@dataclass(frozen=True)
class InboxSettings:
    """The scheduled inbox (``annotate.inbox`` in params.yaml).

    Attributes:
        folders: Inbox folders watched.
        out: Output folder of the inbox runs. Never a DVC stage output: ``dvc repro`` and
            ``dvc checkout`` delete what other runs write there (the runs refuse one).
        interval_s: Seconds between scheduled runs.
        settle_s: Seconds between the two looks at each file; a file that changed meanwhile
            is still being copied.
    """

    folders: tuple[str, ...] = field(default_factory=lambda: ("data/inbox",))
    out: str = "data/inbox-annotations"
    interval_s: float = 300.0
    settle_s: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "folders", tuple(str(f) for f in self.folders))
        if not self.out:
            raise ValueError(
                "annotate.inbox.out must name a folder (the default is data/inbox-annotations); it may no longer be "
                "null, which meant annotate.out: the DVC annotate stage's output, where DVC deleted inbox annotations"
            )
        if self.interval_s <= 0 or self.settle_s < 0:
            raise ValueError(f"annotate.inbox needs interval_s > 0 and settle_s >= 0; got {self}")


@dataclass(frozen=True)
class AnnotateSettings:
    """Every number of an annotation run (``annotate`` section of params.yaml).

    Attributes:
        detect: Detector settings (``annotate.detect``).
        shard_size: Files per shard: one Prefect task and one commit each.
        decode_threads: Threads decoding files while the detector runs.
        prefetch_frames: Decoded frames waiting for the detector at most (memory bound).
        video_every_s: Seconds between sampled video frames.
        video_max_frames: Frames sampled per video at most.
        max_image_pixels: Decompression-bomb guard (from the header).
        max_image_bytes: A larger image file is ``too_large``, never decoded.
        max_model_bytes: A larger ``model.pt`` is refused before it is read.
        align: Turn each face crop upright by its eye landmarks before predicting attributes.
        crop_margin: Fraction of the box added on each side of a face crop.
        predict_batch_size: Face crops per attribute-model forward pass.
        lock_wait_s: Wait this long for another run on the same output folder.
        draw_quality: JPEG quality of ``--draw`` copies.
        all_heads: Also write the heads the model withholds (``reliable: false`` in its
            model.json: they do not beat the majority-class floor in cross-validation).
    """

    detect: DetectSettings = field(default_factory=DetectSettings)
    shard_size: int = 64
    decode_threads: int = 2
    prefetch_frames: int = 32
    video_every_s: float = 1.0
    video_max_frames: int = 600
    max_image_pixels: int = 120_000_000
    max_image_bytes: int = 200 * 1024**2
    max_model_bytes: int = 2 * 1024**3
    align: bool = False
    crop_margin: float = 0.1
    predict_batch_size: int = 32
    lock_wait_s: float = 300.0
    draw_quality: int = 90
    all_heads: bool = False

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.decode_threads < 1 or self.prefetch_frames < 1 or self.predict_batch_size < 1:
            raise ValueError(
                f"annotate needs shard_size, decode_threads, prefetch_frames and predict_batch_size >= 1; got {self}"
            )
        if self.crop_margin < 0 or self.lock_wait_s < 0:
            raise ValueError(f"annotate needs crop_margin >= 0 and lock_wait_s >= 0; got {self}")
        self.read_settings()  # validates the video numbers

    def read_settings(self) -> ReadSettings:
        """The decoding part of these settings."""
        return ReadSettings(
            max_side=self.detect.max_side,
            max_image_pixels=self.max_image_pixels,
            max_image_bytes=self.max_image_bytes,
            video_every_s=self.video_every_s,
            video_max_frames=self.video_max_frames,
        )
