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
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http
import http.client
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
import requests.utils
import urllib3
import urllib3.connection
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from faces_core import __version__
from faces_core.errors import Reason, Rejection, count_by_reason
from faces_core.validate import sha256_file

logger = logging.getLogger(__name__)

MIB: Final = 1024 * 1024
CHUNK_SIZE: Final = 64 * 1024
MANIFEST_NAME: Final = "manifest.jsonl"
PARTIAL_DIR: Final = ".partial"
STALE_PARTIAL_S: Final = 24 * 3600.0
"""Temp files of another host older than this are leftovers of killed runs, removed on open.

Temp files of this host are named by the writing process's pid and removed on open as soon
as that process is gone, so a re-run after a kill leaves no ``.part`` behind.
"""

_SNIFF_BYTES: Final = 32
_RETRY_STATUSES: Final = frozenset({408, 429})
_BINARY_TYPES: Final = frozenset({"application/octet-stream", "binary/octet-stream"})
_BMP_DIB_SIZES: Final = frozenset({12, 40, 52, 56, 64, 108, 124})
FETCHED_SCHEMES: Final = frozenset({"http", "https"})
"""The only URL schemes fetched; anything else (file, ftp, data, a bare path) is refused."""
SUBMIT_WINDOW: Final = 4
"""URLs submitted to the download threads at a time, per thread: memory stays bounded by the
concurrency, not by the number of URLs, and no thread waits for work."""
_WATCHDOG_POLL_S: Final = 0.1
"""How often the watchdog looks at the stop event between deadlines."""


@dataclass(frozen=True)
class DownloadSettings:
    """How :func:`download_all` talks to the network.

    Attributes:
        concurrency: Parallel downloads, also the connection-pool size.
        timeout_s: Connect timeout and per-read timeout, in seconds (not a total deadline).
        attempt_timeout_s: Total deadline of one attempt (all redirects, headers and body):
            a server that sends a byte now and then never trips ``timeout_s``, this stops it.
        url_timeout_s: Total deadline of one URL, all attempts and backoff sleeps included;
            no retry starts, and no ``Retry-After`` is waited for, past it.
        retries: Extra attempts after the first on 408/429/5xx, connection errors, timeouts.
        backoff_s: Base of the exponential backoff (full jitter: ``U(0, base * 2**n)``).
        backoff_max_s: Cap on one backoff sleep, including a server's ``Retry-After``.
        max_bytes: Largest accepted body (checked on ``Content-Length`` and while streaming).
        max_redirects: Redirects followed per attempt; a loop is refused at once.
        allow_private_hosts: Fetch from loopback, private, link-local and other non-public
            addresses. False (the default) refuses such a URL or redirect (``refused_host``),
            so a JSON from elsewhere cannot make the pipeline probe the local network. A host
            name that does not resolve here but is reached through a proxy is left to the
            proxy. Tests and the loopback demo server turn it on, or reach their loopback
            server as a proxy.
        proxies: requests-style ``{"http": url, "https": url}``. None keeps requests'
            environment behaviour (``http_proxy``/``https_proxy``/``no_proxy``); schemes not
            named here still fall back to the environment.
        user_agent: ``User-Agent`` header; some hosts refuse the python-requests default.
    """

    concurrency: int = 64
    timeout_s: float = 10.0
    attempt_timeout_s: float = 60.0
    url_timeout_s: float = 180.0
    retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    max_bytes: int = 50 * MIB
    max_redirects: int = 10
    allow_private_hosts: bool = False
    proxies: dict[str, str] | None = field(default=None, hash=False)
    user_agent: str = f"faces-pipeline/{__version__} (batch image downloader)"

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.timeout_s <= 0 or self.retries < 0 or self.max_bytes < 1:
            raise ValueError(f"invalid download settings: {self!r}")
        if self.attempt_timeout_s <= 0 or self.url_timeout_s <= 0 or self.max_redirects < 0:
            raise ValueError(f"deadlines must be > 0 and max_redirects >= 0: {self!r}")
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


class DownloadCancelled(Exception):
    """The run was stopped (stop event, SIGTERM, Ctrl-C): in-flight requests were abandoned.

    What was stored before the stop stays in the store and its manifest, so a re-run resumes.
    """


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
        tmp = self.partial_dir / f"{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex}.part"
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
        """Delete temp files whose writer is dead (same host) or that are a day old (any host)."""
        cutoff = time.time() - STALE_PARTIAL_S
        for part in self.partial_dir.glob("*.part"):
            try:
                if _writer_is_dead(part.name) or part.stat().st_mtime < cutoff:
                    part.unlink()
            except OSError:
                pass


_HOST_TAG: Final = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _writer_is_dead(name: str) -> bool:
    """Whether the temp file ``<host>-<pid>-<uuid>.part`` was written by a process now gone.

    Only decides for this host's files: a pid from another machine (a shared store) says
    nothing here, so those wait for the age cutoff.
    """
    host, _, rest = name.partition("-")
    pid_text, _, _ = rest.partition("-")
    if host != _HOST_TAG or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive but not ours to signal
    return False


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
        raise DownloadError(Reason.NOT_AN_IMAGE, f"content does not look like an image ({describe_content(head)})")
    return kind


def describe_content(head: bytes) -> str:
    """A guess at what non-image bytes are, for an error message that never quotes them.

    The bytes may be a private file or a server's page: the error log says only what kind of
    thing they look like.

    Args:
        head: The first bytes of the body.

    Returns:
        A short phrase such as ``"looks like text/html"``.
    """
    if not head:
        return "empty body"
    start = head.lstrip()[:64].lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in start:
        return "looks like text/html"
    if start.startswith((b"<?xml", b"<svg")):
        return "looks like XML or SVG"
    if start[:1] in (b"{", b"["):
        return "looks like JSON"
    if head.startswith(b"%PDF"):
        return "looks like application/pdf"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "looks like plain text"
    return "unrecognised binary data"


def _short(text: str, limit: int = 80) -> str:
    """``repr`` of a server- or user-supplied string, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def split_fetchable(url: str) -> tuple[SplitResult, str]:
    """Parse an image URL and refuse anything but an ``http``/``https`` URL with a host.

    Args:
        url: The URL as written in the JSON (or a redirect's target).

    Returns:
        The split URL and its lower-case host name.

    Raises:
        DownloadError: ``unsupported_scheme`` (file, ftp, data, javascript, no scheme, ...) or
            ``unreadable_file`` (not a URL at all, no host). Nothing has been read.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise DownloadError(Reason.UNREADABLE_FILE, f"invalid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in FETCHED_SCHEMES:
        what = f"scheme {_short(scheme, 20)}" if scheme else "a URL without a scheme (a local path?)"
        raise DownloadError(
            Reason.UNSUPPORTED_SCHEME,
            f"only http:// and https:// image URLs are fetched, not {what}; serve the images over HTTP, "
            "or ingest a local folder as an IMFDB-style root",
        )
    if not host:
        raise DownloadError(Reason.UNREADABLE_FILE, "invalid URL: no host name")
    return parts, host


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet (not loopback, private, link-local, ...)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is not None:
            return is_public_address(inner)
    return address.is_global and not address.is_multicast


class _Attempt:
    """One HTTP attempt: its total deadline and the connections it uses, so they can be cut.

    Cutting (``shutdown`` of the socket, from the watchdog thread) makes the worker's blocking
    read return at once; the worker then sees :attr:`why` and reports a timeout or a stop
    instead of whatever error the cut connection raised.
    """

    def __init__(self, deadline: float, limit_s: float, limit_name: str) -> None:
        self.deadline = deadline
        self.limit_s = limit_s
        self.limit_name = limit_name
        self.why: str | None = None  # "deadline" or "stop" once cut
        self._conns: list[urllib3.connection.HTTPConnection] = []
        self._lock = threading.Lock()
        self._done = False

    def register(self, conn: urllib3.connection.HTTPConnection) -> None:
        with self._lock:
            if self._done:
                return
            self._conns.append(conn)
            if self.why is not None:
                _cut(conn)

    def forget(self) -> None:
        """Drop the connections before they go back to the pool (another worker may take them)."""
        with self._lock:
            self._conns.clear()

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._conns.clear()

    def abort(self, why: str) -> None:
        with self._lock:
            if self._done or self.why is not None:
                return
            self.why = why
            for conn in self._conns:
                _cut(conn)

    def check(self) -> None:
        """Raise if this attempt was cut or its deadline passed (checked between chunks)."""
        if self.why is None and time.monotonic() >= self.deadline:
            self.abort("deadline")
        if self.why is not None:
            raise self.error()

    def error(self) -> Exception:
        if self.why == "stop":
            return DownloadCancelled("download stopped; in-flight requests were abandoned")
        return DownloadError(
            Reason.TIMEOUT,
            f"no complete answer within {self.limit_s:g}s (download.{self.limit_name}); the server may be "
            "dripping bytes or stalling",
            retryable=True,
        )


def _cut(conn: urllib3.connection.HTTPConnection) -> None:
    sock = getattr(conn, "sock", None)
    if isinstance(sock, socket.socket):
        # The plain socket's shutdown, also for TLS: it wakes the reader without touching the
        # SSL object another thread is using.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


_current = threading.local()
"""``_current.attempt``: the attempt the calling worker thread is making, if any."""


def _register_connection(conn: urllib3.connection.HTTPConnection) -> None:
    attempt: _Attempt | None = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.register(conn)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    """Tells the worker's current attempt which connection it uses (fresh or from the pool)."""

    def connect(self) -> None:
        _register_connection(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register_connection(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    """HTTPS twin of :class:`_WatchedHTTPConnection`."""

    def connect(self) -> None:
        _register_connection(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register_connection(self)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: Final = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """An adapter whose connections (direct or to an HTTP proxy) register with the attempt."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS keeps its own pools (per-chunk checks only)
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


class _Watchdog:
    """One thread that cuts attempts past their deadline, and all of them on stop."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._cond = threading.Condition()
        self._attempts: set[_Attempt] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)
        self._thread.start()

    def watch(self, attempt: _Attempt) -> None:
        with self._cond:
            self._attempts.add(attempt)
            self._cond.notify()
        if self._stop.is_set():
            attempt.abort("stop")

    def unwatch(self, attempt: _Attempt) -> None:
        with self._cond:
            self._attempts.discard(attempt)

    def abort_all(self) -> None:
        """Cut every in-flight attempt now (the run is stopping)."""
        with self._cond:
            for attempt in self._attempts:
                attempt.abort("stop")
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                stopping = self._stop.is_set()
                for attempt in list(self._attempts):
                    if stopping or attempt.deadline <= now:
                        attempt.abort("stop" if stopping else "deadline")
                        self._attempts.discard(attempt)
                wait = min((a.deadline for a in self._attempts), default=now + _WATCHDOG_POLL_S) - now
                self._cond.wait(min(max(wait, 0.0), _WATCHDOG_POLL_S))


def make_session(settings: DownloadSettings) -> requests.Session:
    """A pooled session: one connection per worker, no hidden retries or redirects (we do our own).

    The session is shared by the worker threads; only connection pools (thread-safe in
    urllib3) change while downloading. Its connections register with the calling worker's
    attempt so the watchdog can cut them.
    """
    session = requests.Session()
    adapter = _WatchedAdapter(pool_connections=settings.concurrency, pool_maxsize=settings.concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = settings.max_redirects
    # Images do not compress; identity keeps Content-Length comparable with the body.
    session.headers.update(
        {"User-Agent": settings.user_agent, "Accept-Encoding": "identity", "Accept": "image/*,*/*;q=0.8"}
    )
    return session


class _Fetcher:
    """Downloads one URL with retries; shared by the worker threads of one run."""

    def __init__(
        self,
        store: ImageStore,
        settings: DownloadSettings,
        session: requests.Session,
        stop: threading.Event,
        watchdog: _Watchdog,
    ) -> None:
        self.store = store
        self.settings = settings
        self.session = session
        self.stop = stop
        self.watchdog = watchdog
        self._dead_hosts: set[str] = set()
        self._addresses: dict[str, list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        self._unresolved: set[str] = set()
        self._left_to_proxy: set[str] = set()
        self._host_locks: dict[str, threading.Lock] = {}
        self._host_locks_lock = threading.Lock()
        self.lookups: Counter[str] = Counter()
        """Resolver calls per host this run (one per host, but for retried failures without a proxy)."""

    def fetch(self, url: str) -> StoredImage:
        """Cached or downloaded image for ``url``.

        Raises:
            DownloadError: The URL failed for good.
            DownloadCancelled: The run is stopping.
        """
        if self.stop.is_set():
            raise DownloadCancelled("download stopped before this URL started")
        if not url.strip():
            raise DownloadError(Reason.UNREADABLE_FILE, "empty URL")
        _, host = split_fetchable(url)  # before the cache: nothing but http(s) is ever served
        cached = self.store.lookup(url)
        if cached is not None:
            return cached
        return self._fetch_http(url, host)

    def _fetch_http(self, url: str, host: str) -> StoredImage:
        if host in self._dead_hosts:
            raise DownloadError(Reason.CONNECTION_ERROR, f"host {host!r} could not be resolved earlier in this run")
        url_deadline = time.monotonic() + self.settings.url_timeout_s
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(url, url_deadline)
            except DownloadError as exc:
                failure = exc
                if host in self._unresolved and attempt == attempts - 1:
                    self._dead_hosts.add(host)
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
            left = url_deadline - time.monotonic()
            if delay >= left:  # never sleep past the URL's deadline, whatever Retry-After says
                failure.message += (
                    f" (after {attempt + 1} attempts; no retry: the {self.settings.url_timeout_s:g}s deadline of "
                    "this URL (download.url_timeout_s) would pass)"
                )
                raise failure
            logger.debug("retrying %s in %.2fs after %s", url, delay, failure)
            if self.stop.wait(delay):
                raise DownloadCancelled("download stopped during a retry wait")
        raise AssertionError("unreachable")

    def _attempt(self, url: str, url_deadline: float) -> StoredImage:
        """One attempt under the watchdog: redirects, headers and body within its deadline."""
        now = time.monotonic()
        if now + self.settings.attempt_timeout_s <= url_deadline:
            attempt = _Attempt(
                now + self.settings.attempt_timeout_s, self.settings.attempt_timeout_s, "attempt_timeout_s"
            )
        else:
            attempt = _Attempt(url_deadline, self.settings.url_timeout_s, "url_timeout_s")
        _current.attempt = attempt
        self.watchdog.watch(attempt)
        try:
            return self._follow(url, attempt)
        except DownloadCancelled:
            raise
        except Exception as exc:
            if attempt.why is not None:  # whatever the cut connection raised, say why it was cut
                raise attempt.error() from exc
            raise
        finally:
            attempt.finish()
            self.watchdog.unwatch(attempt)
            _current.attempt = None

    def _follow(self, url: str, attempt: _Attempt) -> StoredImage:
        """GET ``url``, following redirects by hand so each hop's scheme and host are checked."""
        current = url
        seen = {url}
        proxies = dict(self.settings.proxies) if self.settings.proxies is not None else None
        for _hop in range(self.settings.max_redirects + 1):
            attempt.check()
            _, host = split_fetchable(current)
            self._check_host(current, host)
            left = max(attempt.deadline - time.monotonic(), 0.001)
            timeout = (min(self.settings.timeout_s, left), min(self.settings.timeout_s, left))
            resp = self.session.get(current, stream=True, timeout=timeout, proxies=proxies, allow_redirects=False)
            try:
                target = self.session.get_redirect_target(resp) if resp.is_redirect else None
                if target is None:
                    return self._store(url, resp, attempt)
            finally:
                attempt.forget()  # before the connection may go back to the pool
                resp.close()
            current = requests.utils.requote_uri(urljoin(current, target))
            if current in seen:
                raise DownloadError(Reason.TOO_MANY_REDIRECTS, f"redirect loop after {len(seen)} hop(s)")
            seen.add(current)
        raise DownloadError(
            Reason.TOO_MANY_REDIRECTS, f"more than {self.settings.max_redirects} redirects (download.max_redirects)"
        )

    def _check_host(self, url: str, host: str) -> None:
        """Refuse a host that is or resolves to a non-public address, unless allowed.

        A name that does not resolve here is left to the proxy when one is used (the proxy
        resolves it), and is a (retried) connection error otherwise. The name is resolved
        before requests resolves it again to connect: a DNS answer that changes in between
        (rebinding) is not caught; a proxy with its own rules closes that gap.
        """
        if self.settings.allow_private_hosts:
            return
        proxied = self._proxy_for(url) is not None
        # Through a proxy, a name this machine cannot resolve is asked about once per run:
        # asking the resolver per URL crawled (an offline resolver took 5 s a lookup here).
        addresses = self._resolve(host, remember_failure=proxied)
        if addresses is None:
            if proxied:
                return
            self._unresolved.add(host)
            raise DownloadError(Reason.CONNECTION_ERROR, f"cannot resolve host {_short(host)}", retryable=True)
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise DownloadError(
                Reason.REFUSED_HOST,
                f"host {_short(host)} is or resolves to the non-public address {refused[0]}; set "
                "download.allow_private_hosts: true in params.yaml if this JSON is trusted",
            )

    def _resolve(
        self, host: str, remember_failure: bool = False
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
        """Addresses of ``host`` (cached for the run once resolved), or None when it does not resolve.

        One thread at a time resolves a given host: 64 workers starting on the same host made 64
        simultaneous lookups of it.
        """
        if host in self._addresses:
            return self._addresses[host]
        with self._host_locks_lock:
            lock = self._host_locks.setdefault(host, threading.Lock())
        with lock:
            if host in self._addresses:
                return self._addresses[host]
            if remember_failure and host in self._left_to_proxy:
                return None
            try:
                addresses = [ipaddress.ip_address(host.strip("[]").split("%")[0])]
            except ValueError:
                self.lookups[host] += 1
                try:
                    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
                    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
                except (OSError, UnicodeError, ValueError):
                    if remember_failure:
                        self._left_to_proxy.add(host)  # the proxy resolves it; no need to ask again
                    return None  # else not cached: a retry (no proxy) asks the resolver again
            self._addresses[host] = addresses
            return addresses

    def _proxy_for(self, url: str) -> str | None:
        """The proxy requests will use for ``url`` (explicit setting, then the environment)."""
        proxies = dict(self.settings.proxies or {})
        if self.session.trust_env:
            for key, value in requests.utils.get_environ_proxies(url, no_proxy=proxies.get("no_proxy")).items():
                proxies.setdefault(key, value)
        return requests.utils.select_proxy(url, proxies)

    def _store(self, url: str, resp: requests.Response, attempt: _Attempt) -> StoredImage:
        """Check status and headers, then stream the body into the store under the deadline."""
        status = resp.status_code
        if status >= 400:
            retryable = status in _RETRY_STATUSES or status >= 500
            retry_after = retry_after_seconds(resp.headers.get("Retry-After"), self.settings.backoff_max_s)
            raise DownloadError(Reason.HTTP_ERROR, f"HTTP {status} {_phrase(status)}".rstrip(), retryable, retry_after)
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith("image/") and content_type not in _BINARY_TYPES:
            raise DownloadError(Reason.NOT_AN_IMAGE, f"content type {_short(content_type, 60)}")
        declared = _content_length(resp)
        if declared is not None and declared > self.settings.max_bytes:
            raise DownloadError(Reason.TOO_LARGE, f"Content-Length {declared} > {self.settings.max_bytes}")
        encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
        return self.store.add(
            url,
            _checked(resp.iter_content(CHUNK_SIZE), attempt),
            self.settings.max_bytes,
            expected_size=None if encoded else declared,
        )


def _checked(chunks: Iterator[bytes], attempt: _Attempt) -> Iterator[bytes]:
    """The body's chunks, stopping at the attempt's deadline or stop.

    Also checked after the last chunk: a cut connection ends a body without
    ``Content-Length`` like a normal end, and that truncated body must not be stored.
    """
    for chunk in chunks:
        attempt.check()
        yield chunk
    attempt.check()


def _phrase(status: int) -> str:
    """The standard reason phrase (the server's own text is not echoed into the error log)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


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
        return DownloadError(Reason.TOO_MANY_REDIRECTS, f"too many redirects: {exc}")
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
    stop: threading.Event | None = None,
) -> DownloadReport:
    """Download every unique URL into ``store``, concurrently, resuming what is stored.

    Only ``http``/``https`` URLs are fetched, with retries (exponential backoff with full
    jitter, honouring ``Retry-After``) inside a total deadline per attempt and per URL. A URL
    already in the store whose file verifies is not fetched again (``from_cache=True``).

    Stopping is prompt: when ``stop`` is set, or when the calling thread is interrupted
    (SIGTERM turned into an exception, Ctrl-C), URLs not started are cancelled and in-flight
    requests are cut; images stored so far stay stored (file and manifest line).

    Args:
        urls: Image URLs; duplicates are fetched once.
        store: Where images and the manifest go.
        settings: Network settings (defaults when None).
        progress: Called as ``progress(done, total)`` in the calling thread each time a URL
            finishes; keep it cheap.
        source: Dataset name for the rejections.
        stop: Set it (from any thread) to stop the downloads; it is also set when this call
            ends by an exception, so other users of the event see the stop.

    Returns:
        A result or a rejection (stage ``download``, item = URL) for every unique URL, both in
        input order.

    Raises:
        DownloadCancelled: ``stop`` was set before every URL finished.
        OSError: Only for failures of the store itself (disk full), never for a bad URL.
    """
    settings = settings or DownloadSettings()
    stop = stop if stop is not None else threading.Event()
    unique = list(dict.fromkeys(urls))
    total = len(unique)
    logger.info("downloading %d unique URLs with %d workers into %s", total, settings.concurrency, store.root)
    outcomes: dict[str, StoredImage | DownloadError] = {}
    watchdog = _Watchdog(stop)
    try:
        with make_session(settings) as session:
            fetcher = _Fetcher(store, settings, session, stop, watchdog)
            pool = ThreadPoolExecutor(
                max_workers=max(1, min(settings.concurrency, total)), thread_name_prefix="download"
            )
            # A window of URLs in flight, not a future per URL: a million-URL run held a
            # Future (with its lock and condition) for every URL at once, about 3 KB each.
            pending: dict[Future[StoredImage], str] = {}
            todo = iter(unique)
            window = SUBMIT_WINDOW * settings.concurrency
            try:
                done = 0
                while True:
                    for url in itertools.islice(todo, max(0, window - len(pending))):
                        pending[pool.submit(fetcher.fetch, url)] = url
                    if not pending:
                        break
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        url = pending.pop(future)
                        try:
                            outcomes[url] = future.result()
                        except DownloadError as exc:
                            logger.debug("rejected %s: %s", url, exc)
                            outcomes[url] = exc
                        done += 1
                        if progress is not None:
                            progress(done, total)
            except BaseException:
                # Interrupted (signal, Ctrl-C, stop, store failure): cancel what has not started
                # and cut what is in flight, so the workers end in moments, not minutes.
                stop.set()
                watchdog.abort_all()
                pool.shutdown(wait=True, cancel_futures=True)
                logger.warning(
                    "download stopped: %d of %d URLs finished; stored images are kept for the next run",
                    len(outcomes),
                    total,
                )
                raise
            pool.shutdown(wait=True)
    finally:
        watchdog.close()
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
