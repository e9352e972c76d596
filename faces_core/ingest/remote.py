"""The TCS images: stored by URL under ``raw_dir``, each face of a failed URL rejected.

:func:`download_images` fetches (or finds already stored) every distinct URL, after
:func:`check_raw_dir` made sure the store can take files; :func:`require_a_connection`
stops a run in which not one URL could connect (the network or the proxy, not the data).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from faces_core.download import DownloadReport, DownloadSettings, ImageStore, download_all
from faces_core.errors import Reason, Rejection, redact_userinfo
from faces_core.ingest.settings import IngestSettings
from faces_core.records import FaceRecord
from faces_core.storage import OutputError


def check_raw_dir(settings: IngestSettings) -> None:
    """Fail before any download when the image store cannot take files (a file in the way,
    read-only, full), with one line that says what to do.

    Raises:
        OutputError: naming ``raw_dir`` and the cause.
    """
    root = Path(settings.raw_dir) / "images"
    probe = root / f".write-test-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)  # a full disk leaves the probe created but empty
        cause = f"{os.strerror(exc.errno) if exc.errno else exc}: {os.fsdecode(exc.filename or root)}"
        raise OutputError(
            f"cannot store downloaded images in {settings.raw_dir} ({cause}): point ingest.raw_dir in params.yaml "
            "(or --raw-dir) at a writable directory with room; nothing was downloaded"
        ) from exc


def image_store(settings: IngestSettings) -> ImageStore:
    """The content-addressed store of downloaded images under ``raw_dir``."""
    return ImageStore(Path(settings.raw_dir) / "images")


def download_images(
    records: Sequence[FaceRecord],
    settings: IngestSettings,
    progress: Callable[[int, int], None] | None = None,
) -> DownloadReport:
    """Download (or find already stored) every distinct image URL the records name."""
    urls = list(dict.fromkeys(r.image_ref for r in records))
    return download_all(urls, image_store(settings), settings.download, progress=progress)


class NothingDownloadedError(RuntimeError):
    """Every image URL failed to connect: the network or the proxy is the problem, not the data.

    A run that kept going would commit a dataset without a single downloaded face and exit 0
    (a demo under a dead ``http_proxy`` did); this stops it first, and the previous dataset
    stays in place.
    """


def require_a_connection(report: DownloadReport, settings: DownloadSettings) -> None:
    """Raise when URLs were tried and every one failed with ``connection_error``.

    A run in which only some URLs fail is normal (dead hosts, moved images) and goes on; each
    failure is in the error log.

    Raises:
        NothingDownloadedError: Naming the proxy in use, and what to check.
    """
    if report.results or not report.rejections:
        return
    if any(r.reason != Reason.CONNECTION_ERROR for r in report.rejections):
        return
    sample = report.rejections[0]
    raise NothingDownloadedError(
        f"none of the {len(report.rejections)} image URLs could be reached ({proxy_description(settings)}); "
        f"first failure: {sample.item}: {sample.message}. Check the network and the proxy (--proxy, "
        "http_proxy/https_proxy; `faces doctor` tests it); nothing was committed, the previous dataset is unchanged"
    )


def proxy_description(settings: DownloadSettings) -> str:
    """Which proxy image downloads go through, with any password hidden."""
    chosen = dict(settings.proxies or {})
    for key in ("http", "https"):
        for name in (f"{key}_proxy", f"{key.upper()}_PROXY"):
            if os.environ.get(name) and key not in chosen:
                chosen[key] = os.environ[name]
    general = {k: v for k, v in chosen.items() if k in ("http", "https") and v}
    if not general:
        return "no proxy: direct connections"
    return "through proxy " + ", ".join(f"{k}={redact_url(v)}" for k, v in sorted(general.items()))


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (``user:***@host``).

    A URL with a scheme goes through :func:`faces_core.errors.redact_userinfo`; a proxy given
    as bare ``user:pw@host:port`` (no scheme, which that redactor leaves alone in free text)
    is handled here.
    """
    if "://" in url:
        return redact_userinfo(url)
    userinfo, at, host = url.rpartition("@")
    if not at or "/" in userinfo:
        return url
    return f"{userinfo.split(':', 1)[0]}:***@{host}"


def downloaded_files(
    records: Sequence[FaceRecord], report: DownloadReport
) -> tuple[dict[str, tuple[str, str]], list[Rejection]]:
    """Map URLs to stored files; reject each face whose image could not be downloaded.

    A failed URL is rejected once per face it carried (item ``url#faceN``, the URL's reason),
    so every face can be found in the error log.
    """
    files = {url: (str(stored.path), stored.sha256) for url, stored in report.results.items()}
    failed = {r.item: r for r in report.rejections}
    rejections = [
        Rejection(rec.source, rec.item, "download", failed[rec.image_ref].reason, failed[rec.image_ref].message)
        for rec in records
        if rec.image_ref not in files and rec.image_ref in failed
    ]
    missing = [rec for rec in records if rec.image_ref not in files and rec.image_ref not in failed]
    if missing:
        raise RuntimeError(
            f"{len(missing)} faces have neither a file nor a download rejection (first: {missing[0].item})"
        )
    return files, rejections
