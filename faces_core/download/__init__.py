"""Concurrent, resumable, content-addressed image download.

Replaces a one-at-a-time script. Every URL ends as either a verified file in an
:class:`ImageStore` or a :class:`~faces_core.errors.Rejection`; one bad URL never stops the
others. Images are stored once per content (``root/<sha[:2]>/<sha><ext>``) and a crash-safe
manifest maps each URL to its content, so a re-run downloads only what is missing or damaged.

The URLs come from a JSON anyone may have written, so a URL is treated as hostile: only
``http``/``https`` are fetched (never a local file), loopback and private addresses are
refused unless allowed, redirects are followed by hand and checked hop by hop, and every
attempt and every URL has a total deadline that a watchdog enforces by cutting the
connection, so a server that drips a byte every few seconds cannot hold a worker. The same
cut abandons in-flight requests when the run is stopped (SIGTERM, Ctrl-C, a stop event).

One job per module:

* :mod:`~faces_core.download.settings`: :class:`DownloadSettings`;
* :mod:`~faces_core.download.results`: what a URL ends as (:class:`StoredImage`,
  :class:`DownloadError`, :class:`DownloadCancelled`) and the run's :class:`DownloadReport`;
* :mod:`~faces_core.download.content`: what a body is (magic-byte sniffing);
* :mod:`~faces_core.download.store`: the content-addressed :class:`ImageStore` and its manifest;
* :mod:`~faces_core.download.urlsafety`: which URLs and hosts may be fetched, and which hosts a
  proxy resolves;
* :mod:`~faces_core.download.watchdog`: attempts with total deadlines whose connections a
  watchdog thread cuts, and the session whose connections register with them;
* :mod:`~faces_core.download.fetch`: one URL with redirects, retries and backoff;
* :mod:`~faces_core.download.pool`: :func:`download_all`, the threads and the report.
"""

from faces_core.download.content import describe_content, sniff_image_type
from faces_core.download.fetch import CHUNK_SIZE, retry_after_seconds
from faces_core.download.pool import SUBMIT_WINDOW, download_all
from faces_core.download.results import DownloadCancelled, DownloadError, DownloadReport, StoredImage
from faces_core.download.settings import MIB, DownloadSettings
from faces_core.download.store import MANIFEST_NAME, PARTIAL_DIR, STALE_PARTIAL_S, ImageStore
from faces_core.download.urlsafety import FETCHED_SCHEMES, is_public_address, split_fetchable
from faces_core.download.watchdog import make_session

__all__ = [
    "CHUNK_SIZE",
    "FETCHED_SCHEMES",
    "MANIFEST_NAME",
    "MIB",
    "PARTIAL_DIR",
    "STALE_PARTIAL_S",
    "SUBMIT_WINDOW",
    "DownloadCancelled",
    "DownloadError",
    "DownloadReport",
    "DownloadSettings",
    "ImageStore",
    "StoredImage",
    "describe_content",
    "download_all",
    "is_public_address",
    "make_session",
    "retry_after_seconds",
    "sniff_image_type",
    "split_fetchable",
]
