"""What an ingest run is given besides its inputs: :class:`IngestSettings` (sections of params.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from faces_core.download import DownloadSettings
from faces_core.ingest.partition import PartitionSettings
from faces_core.ingest.sources import MAX_LINE_BYTES, MAX_TCS_BYTES, MAX_TXT_BYTES
from faces_core.ingest.sources.tcs import CHUNK_IMAGES
from faces_core.validate import MAX_CROP_BYTES, ValidateSettings


@dataclass(frozen=True, slots=True)
class ObjectLocations:
    """The object-store URLs a run's local folders stand for, when any location is a URL.

    A shard on a machine that shares no disk with the flow reads its images from ``raw_url``
    (committed by manifest) or ``imfdb_url`` (plain objects) and uploads its parts to
    ``out_url`` under the run's prefix (:mod:`faces_core.ingest.objects`).

    Attributes:
        run_id: The run's id: its prefix ``<out_url>/_runs/<run_id>/``.
        out_url: URL of ``out_dir``, or None.
        raw_url: URL of ``raw_dir``, or None.
        imfdb_url: URL of the IMFDB root, or None.
        mirrors: (local folder on the flow's machine, URL) for every URL above.
    """

    run_id: str
    out_url: str | None = None
    raw_url: str | None = None
    imfdb_url: str | None = None
    mirrors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Everything an ingest run needs besides its inputs (sections of params.yaml).

    ``lock_wait_s`` is how long a run waits for another run on the same ``out_dir`` to
    finish before giving up (see :func:`~faces_core.storage.output_lock`). The
    ``max_*_bytes`` caps refuse a larger TCS file, IMFDB annotation txt or IMFDB crop unread
    (``too_large``), so no input is ever held whole in memory past them. ``chunk_images``
    is how many TCS images are downloaded and partitioned before the next are parsed: what a
    run of any length holds in memory at once.
    """

    raw_dir: str = "data/raw"
    out_dir: str = "data/processed"
    shard_size: int = 1000
    chunk_images: int = CHUNK_IMAGES
    workers: int = 0
    max_line_bytes: int = MAX_LINE_BYTES
    max_tcs_bytes: int = MAX_TCS_BYTES
    max_annotation_bytes: int = MAX_TXT_BYTES
    max_crop_bytes: int = MAX_CROP_BYTES
    lock_wait_s: float = 300.0
    download: DownloadSettings = field(default_factory=DownloadSettings)
    validate: ValidateSettings = field(default_factory=ValidateSettings)
    partition: PartitionSettings = field(default_factory=PartitionSettings)
    objects: ObjectLocations | None = None

    @property
    def worker_count(self) -> int:
        """Processes for partitioning: ``workers`` or, when 0, one per CPU core."""
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)
