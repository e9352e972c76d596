"""Concurrent, resumable, content-addressed image download.

Replaces a one-at-a-time script. Every URL ends as either a verified file in an
:class:`ImageStore` or a :class:`~faces_core.errors.Rejection`; one bad URL never stops the
others. Images are stored once per content (``root/<sha[:2]>/<sha><ext>``) and a crash-safe
manifest maps each URL to its content, so a re-run downloads only what is missing or damaged.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import os
import random
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from faces_core import __version__
from faces_core.errors import Reason, Rejection, count_by_reason
from faces_core.ingest.validate import sha256_file

logger = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
CHUNK_SIZE: Final = 64 * 1024
MANIFEST_NAME: Final = "manifest.jsonl"
PARTIAL_DIR: Final = ".partial"
STALE_PARTIAL_S: Final = 24 * 3600.0
"""Temp files older than this are leftovers of killed runs and are removed on open."""

_SNIFF_BYTES: Final = 32
_RETRY_STATUSES: Final = frozenset({408, 429})
_BINARY_TYPES: Final = frozenset({"application/octet-stream", "binary/octet-stream"})
_BMP_DIB_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})


@dataclass(frozen=True)
class DownloadSettings:
    """How :func:`download_all` talks to the network.

    Attributes:
        concurrency: Parallel downloads, also the connection-pool size.
        timeout_s: Connect timeout and per-read timeout, in seconds (not a total deadline).
        retries: Extra attempts after the first on 408/429/5xx, connection errors, timeouts.
        backoff_s: Base of the exponential backoff (full jitter: ``U(0, base * 2**n)``).
        backoff_max_s: Cap on one backoff sleep, including a server's ``Retry-After``.
        max_bytes: Largest accepted body (checked on ``Content-Length`` and while streaming).
        proxies: requests-style ``{"http": url, "https": url}``. None keeps requests'
            environment behaviour (``http_proxy``/``https_proxy``/``no_proxy``); schemes not
            named here still fall back to the environment.
        user_agent: ``User-Agent`` header; some hosts refuse the python-requests default.
    """

    concurrency: int = 32
    timeout_s: float = 10.0
    retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    max_bytes: int = 50 * MIB
    proxies: dict[str, str] | None = field(default=None, hash=False)
    user_agent: str = f"faces-pipeline/{__version__} (batch image downloader)"

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.timeout_s <= 0 or self.retries < 0 or self.max_bytes < 1:
            raise ValueError(f"invalid download settings: {self!r}")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"backoff must be >= 0: {self!r}")


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


_IMAGE_TYPES: Final = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
}


def sniff_image_type(head: bytes) -> tuple[str, str] | None:
    """Identify an image format from its first bytes.

    Args:
        head: At least the first 32 bytes of the file (fewer only if the file is shorter).

    Returns:
        ``(mime_type, extension)`` for JPEG/PNG/GIF/WEBP/BMP/TIFF, else None.
    """
    if head.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif head.startswith((b"GIF87a", b"GIF89a")):
        mime = "image/gif"
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        mime = "image/webp"
    elif head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        # "BM" alone is too weak (any text starting "BM..."), so check the DIB header size too.
        mime = "image/bmp"
    elif head.startswith((b"II*\x00", b"MM\x00*")):
        mime = "image/tiff"
    else:
        return None
    return mime, _IMAGE_TYPES[mime]


def retry_after_seconds(value: str | None, cap: float) -> float | None:
    """Parse a ``Retry-After`` header (seconds or HTTP date) into a wait, capped at ``cap``.

    Returns:
        Seconds to wait in ``[0, cap]``, or None when the header is absent or unparsable.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry must reach disk too (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ImageStore:
    """Content-addressed image files plus an append-only URL manifest.

    Files live at ``root/<sha[:2]>/<sha><ext>``, so the same bytes at two URLs are stored
    once. ``root/manifest.jsonl`` has one JSON object per stored URL (``url``, ``sha256``,
    ``ext``, ``size``, ``content_type``); each line is flushed and fsynced after the file it
    names, so a kill leaves at worst a torn last line, which reading ignores. Later lines
    win. Safe to share between threads; processes may append to the same store (each line
    is one ``O_APPEND`` write) but only see each other's entries on the next open.

    Args:
        root: Store directory, created if missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST_NAME
        self.partial_dir = self.root / PARTIAL_DIR
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._read_manifest()
        self._repair_torn_tail()
        self._remove_stale_partials()

    def __len__(self) -> int:
        return len(self._entries)

    def path_for(self, sha256: str, ext: str) -> Path:
        """Where the content with this digest lives."""
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def lookup(self, url: str) -> StoredImage | None:
        """The stored image for ``url`` if its file exists and its sha256 still verifies.

        Re-hashes the file, so a truncated or corrupted file reads as missing and is
        downloaded again.
        """
        with self._lock:
            entry = self._entries.get(url)
        if entry is None:
            return None
        path = self.path_for(entry["sha256"], entry["ext"])
        try:
            actual = sha256_file(path)
        except OSError:
            return None
        if actual != entry["sha256"]:
            logger.warning("stored file %s fails its checksum; it will be downloaded again", path)
            return None
        return StoredImage(path, actual, entry["size"], entry["content_type"], from_cache=True)

    def add(
        self,
        url: str,
        chunks: Iterable[bytes],
        max_bytes: int,
        expected_size: int | None = None,
    ) -> StoredImage:
        """Stream bytes into the store and record them under ``url``.

        Writes a temp file in the store (same filesystem), hashing as it goes, then fsyncs
        and atomically renames it into place, then appends the manifest line. A failure at
        any point leaves no partial file behind.

        Args:
            url: Key for the manifest.
            chunks: The body; exceptions it raises propagate.
            max_bytes: Abort with ``too_large`` once the body grows past this.
            expected_size: Declared length; a shorter or longer body is a broken transfer.

        Returns:
            The stored image (``from_cache=False``).

        Raises:
            DownloadError: ``too_large``, ``not_an_image`` or ``connection_error`` (truncated).
        """
        tmp = self.partial_dir / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        head = b""
        size = 0
        kind: tuple[str, str] | None = None
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError(Reason.TOO_LARGE, f"body exceeds {max_bytes} bytes")
                    if kind is None and len(head) < _SNIFF_BYTES:
                        head += chunk[: _SNIFF_BYTES - len(head)]
                        if len(head) >= _SNIFF_BYTES:
                            kind = _sniff_or_raise(head)  # abort early on an HTML error page
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected_size is not None and size != expected_size:
                raise DownloadError(
                    Reason.CONNECTION_ERROR,
                    f"truncated transfer: got {size} of {expected_size} bytes",
                    retryable=True,
                )
            if kind is None:
                kind = _sniff_or_raise(head)
            sha = digest.hexdigest()
            final = self.path_for(sha, kind[1])
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)
        self._append({"url": url, "sha256": sha, "ext": kind[1], "size": size, "content_type": kind[0]})
        return StoredImage(final, sha, size, kind[0], from_cache=False)

    def _append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        # One O_APPEND write per line keeps lines whole across threads and processes, so the
        # fsync (the slow part) needs no lock.
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._entries[entry["url"]] = entry

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = {}
        if not self.manifest_path.exists():
            return entries
        skipped = 0
        with open(self.manifest_path, "rb") as f:
            for raw in f:
                entry = _parse_manifest_line(raw)
                if entry is None:
                    skipped += 1
                else:
                    entries[entry["url"]] = entry
        if skipped:
            logger.warning("ignored %d unreadable manifest line(s) in %s", skipped, self.manifest_path)
        return entries

    def _repair_torn_tail(self) -> None:
        """End a torn last line so the next append starts on a line of its own."""
        try:
            with open(self.manifest_path, "rb+") as f:
                if f.seek(0, os.SEEK_END) == 0:
                    return
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
                    f.flush()
                    os.fsync(f.fileno())
        except FileNotFoundError:
            pass

    def _remove_stale_partials(self) -> None:
        cutoff = time.time() - STALE_PARTIAL_S
        for part in self.partial_dir.glob("*.part"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
            except OSError:
                pass


def _parse_manifest_line(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    expected = {"url": str, "sha256": str, "ext": str, "size": int, "content_type": str}
    if not all(isinstance(entry.get(k), t) for k, t in expected.items()):
        return None
    # The ext and digest become a path: accept only what add() writes.
    if len(entry["sha256"]) != 64 or entry["ext"] not in _IMAGE_TYPES.values():
        return None
    return entry


def _sniff_or_raise(head: bytes) -> tuple[str, str]:
    kind = sniff_image_type(head)
    if kind is None:
        raise DownloadError(Reason.NOT_AN_IMAGE, f"content does not look like an image (starts {head[:16]!r})")
    return kind


def make_session(settings: DownloadSettings) -> requests.Session:
    """A pooled session: one connection per worker, no hidden retries (we do our own).

    The session is shared by the worker threads; only connection pools (thread-safe in
    urllib3) change while downloading.
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=settings.concurrency, pool_maxsize=settings.concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # Images do not compress; identity keeps Content-Length comparable with the body.
    session.headers.update(
        {"User-Agent": settings.user_agent, "Accept-Encoding": "identity", "Accept": "image/*,*/*;q=0.8"}
    )
    return session


class _Fetcher:
    """Downloads one URL with retries; shared by the worker threads of one run."""

    def __init__(self, store: ImageStore, settings: DownloadSettings, session: requests.Session) -> None:
        self.store = store
        self.settings = settings
        self.session = session
        self._dead_hosts: set[str] = set()

    def fetch(self, url: str) -> StoredImage:
        """Cached, copied or downloaded image for ``url``.

        Raises:
            DownloadError: The URL failed for good.
        """
        if not url.strip():
            raise DownloadError(Reason.UNREADABLE_FILE, "empty URL")
        cached = self.store.lookup(url)
        if cached is not None:
            return cached
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise DownloadError(Reason.UNREADABLE_FILE, f"invalid URL: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            return self._fetch_http(url, host)
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise DownloadError(Reason.UNREADABLE_FILE, f"remote file URL host {parts.netloc!r}")
            return self._copy_local(url, Path(url2pathname(parts.path)))
        if scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # plain or C:\ path
            return self._copy_local(url, Path(url))
        raise DownloadError(Reason.UNREADABLE_FILE, f"unsupported URL scheme {parts.scheme!r}")

    def _copy_local(self, url: str, path: Path) -> StoredImage:
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise DownloadError(Reason.UNREADABLE_FILE, f"{path} is not a regular file")
            source = open(path, "rb")  # noqa: SIM115 (the with below closes it)
        except (OSError, ValueError) as exc:  # ValueError: embedded NUL byte
            raise DownloadError(Reason.UNREADABLE_FILE, f"cannot read {path!r}: {exc}") from exc
        with source:
            if info.st_size > self.settings.max_bytes:
                raise DownloadError(Reason.TOO_LARGE, f"{path} has {info.st_size} bytes > {self.settings.max_bytes}")
            # Store write errors (disk full) propagate: they are not this URL's fault.
            return self.store.add(url, _read_source(source, path), self.settings.max_bytes)

    def _fetch_http(self, url: str, host: str) -> StoredImage:
        if host in self._dead_hosts:
            raise DownloadError(Reason.CONNECTION_ERROR, f"host {host!r} could not be resolved earlier in this run")
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(url)
            except DownloadError as exc:
                failure = exc
            except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException) as exc:
                failure = _classify(exc)
                if _is_name_resolution_error(exc) and attempt == attempts - 1:
                    self._dead_hosts.add(host)  # set.add is atomic; a dead TCS host fails fast
            if not failure.retryable or attempt == attempts - 1:
                if attempt:
                    failure.message += f" (after {attempt + 1} attempts)"
                raise failure
            delay = failure.retry_after
            if delay is None:
                delay = random.uniform(0, min(self.settings.backoff_max_s, self.settings.backoff_s * 2**attempt))
            logger.debug("retrying %s in %.2fs after %s", url, delay, failure)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, url: str) -> StoredImage:
        timeout = (self.settings.timeout_s, self.settings.timeout_s)
        proxies = dict(self.settings.proxies) if self.settings.proxies is not None else None
        with self.session.get(url, stream=True, timeout=timeout, proxies=proxies, allow_redirects=True) as resp:
            status = resp.status_code
            if status >= 400:
                retryable = status in _RETRY_STATUSES or status >= 500
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"), self.settings.backoff_max_s)
                raise DownloadError(Reason.HTTP_ERROR, f"HTTP {status} {resp.reason}".rstrip(), retryable, retry_after)
            content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type and not content_type.startswith("image/") and content_type not in _BINARY_TYPES:
                raise DownloadError(Reason.NOT_AN_IMAGE, f"content type {content_type!r}")
            declared = _content_length(resp)
            if declared is not None and declared > self.settings.max_bytes:
                raise DownloadError(Reason.TOO_LARGE, f"Content-Length {declared} > {self.settings.max_bytes}")
            encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
            return self.store.add(
                url,
                resp.iter_content(CHUNK_SIZE),
                self.settings.max_bytes,
                expected_size=None if encoded else declared,
            )


def _read_source(f: Any, path: Path) -> Iterator[bytes]:
    """Chunks of a local source file; read errors are the source's fault, not the store's."""
    while True:
        try:
            chunk = f.read(CHUNK_SIZE)
        except OSError as exc:
            raise DownloadError(Reason.UNREADABLE_FILE, f"cannot read {path}: {exc}") from exc
        if not chunk:
            return
        yield chunk


def _content_length(resp: requests.Response) -> int | None:
    try:
        value = int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None
    return value if value >= 0 else None


def _root_cause(exc: BaseException) -> BaseException | None:
    """The urllib3 exception inside a requests exception, looking through MaxRetryError."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
    if isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
        return inner.reason
    return inner


def _is_name_resolution_error(exc: BaseException) -> bool:
    return isinstance(_root_cause(exc), urllib3.exceptions.NameResolutionError)


def _classify(exc: Exception) -> DownloadError:
    """Map a requests/urllib3 failure to a reason code and whether to retry."""
    cause = _root_cause(exc)
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        # Checked first: urllib3 makes NewConnectionError (refused, DNS) a ConnectTimeoutError.
        return DownloadError(Reason.CONNECTION_ERROR, f"cannot connect: {cause}", retryable=True)
    if isinstance(exc, requests.Timeout) or isinstance(cause, urllib3.exceptions.TimeoutError):
        # requests turns a read timeout *while streaming* into ConnectionError(ReadTimeoutError).
        return DownloadError(Reason.TIMEOUT, f"timed out: {exc}", retryable=True)
    if isinstance(exc, requests.TooManyRedirects):
        return DownloadError(Reason.HTTP_ERROR, f"too many redirects: {exc}")
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema | ValueError):
        return DownloadError(Reason.UNREADABLE_FILE, f"invalid URL: {exc}")
    if isinstance(exc, requests.exceptions.InvalidSchema | requests.exceptions.InvalidHeader):
        return DownloadError(Reason.UNREADABLE_FILE, f"cannot request URL: {exc}")
    if isinstance(exc, requests.exceptions.SSLError):
        return DownloadError(Reason.CONNECTION_ERROR, f"TLS error: {exc}")
    return DownloadError(Reason.CONNECTION_ERROR, f"{type(exc).__name__}: {exc}", retryable=True)


def download_all(
    urls: Iterable[str],
    store: ImageStore,
    settings: DownloadSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    source: str = "tcs",
) -> DownloadReport:
    """Download every unique URL into ``store``, concurrently, resuming what is stored.

    HTTP(S) URLs are fetched with retries (exponential backoff with full jitter, honouring
    ``Retry-After``); ``file://`` URLs and plain local paths are copied in. A URL already in
    the store whose file verifies is not fetched again (``from_cache=True``).

    Args:
        urls: URLs or local paths; duplicates are fetched once.
        store: Where images and the manifest go.
        settings: Network settings (defaults when None).
        progress: Called as ``progress(done, total)`` in the calling thread each time a URL
            finishes; keep it cheap.
        source: Dataset name for the rejections.

    Returns:
        A result or a rejection (stage ``download``, item = URL) for every unique URL, both in
        input order.

    Raises:
        OSError: Only for failures of the store itself (disk full), never for a bad URL.
    """
    settings = settings or DownloadSettings()
    unique = list(dict.fromkeys(urls))
    total = len(unique)
    logger.info("downloading %d unique URLs with %d workers into %s", total, settings.concurrency, store.root)
    outcomes: dict[str, StoredImage | DownloadError] = {}
    with make_session(settings) as session:
        fetcher = _Fetcher(store, settings, session)
        pool = ThreadPoolExecutor(max_workers=max(1, min(settings.concurrency, total)), thread_name_prefix="download")
        futures: dict[Future[StoredImage], str] = {}
        try:
            futures = {pool.submit(fetcher.fetch, url): url for url in unique}
            for done, future in enumerate(as_completed(futures), start=1):
                url = futures[future]
                try:
                    outcomes[url] = future.result()
                except DownloadError as exc:
                    logger.debug("rejected %s: %s", url, exc)
                    outcomes[url] = exc
                if progress is not None:
                    progress(done, total)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    report = DownloadReport()
    for url in unique:
        outcome = outcomes[url]
        if isinstance(outcome, StoredImage):
            report.results[url] = outcome
        else:
            report.rejections.append(Rejection(source, url, "download", outcome.reason, outcome.message))
    logger.info(
        "download finished: %d downloaded, %d from cache, %d rejected %s",
        report.downloaded,
        report.cached,
        len(report.rejections),
        count_by_reason(report.rejections),
    )
    return report
