"""What a download ends as: a :class:`StoredImage`, a :class:`DownloadError`, or a stop.

:class:`DownloadReport` holds one or the other for every URL of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from faces_core.errors import Reason, Rejection


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A verified image in the store.

    Attributes:
        path: ``root/<sha[:2]>/<sha><ext>``.
        sha256: Hex digest of the file's bytes.
        size: Bytes.
        content_type: MIME type sniffed from the magic bytes (servers' headers lie).
        from_cache: True when this run found it already stored and verified.
    """

    path: Path
    sha256: str
    size: int
    content_type: str
    from_cache: bool = False


@dataclass(slots=True)
class DownloadReport:
    """What :func:`download_all` returns: a stored image or a rejection for every unique URL."""

    results: dict[str, StoredImage] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def downloaded(self) -> int:
        """URLs fetched by this run."""
        return sum(not r.from_cache for r in self.results.values())

    @property
    def cached(self) -> int:
        """URLs already stored and verified before this run."""
        return sum(r.from_cache for r in self.results.values())


class DownloadError(Exception):
    """One URL failed; carries the reason code for the error log.

    Args:
        reason: Rejection code.
        message: Human explanation with the offending value.
        retryable: Whether another attempt may succeed.
        retry_after: Server-requested wait before the next attempt, in seconds.
    """

    def __init__(self, reason: Reason, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(reason, message, retryable, retry_after)
        self.reason = Reason(reason)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class DownloadCancelled(Exception):
    """The run was stopped (stop event, SIGTERM, Ctrl-C): in-flight requests were abandoned.

    What was stored before the stop stays in the store and its manifest, so a re-run resumes.
    """
