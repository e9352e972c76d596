"""One URL, fetched: redirects followed by hand, retries with backoff, the body streamed into
the store under the attempt's deadline."""

from __future__ import annotations

import email.utils
import http
import http.client
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urljoin

import requests
import requests.utils
import urllib3
import urllib3.exceptions

from faces_core.download.results import DownloadCancelled, DownloadError, StoredImage
from faces_core.download.settings import DownloadSettings
from faces_core.download.store import ImageStore
from faces_core.download.urlsafety import HostGuard, short, split_fetchable
from faces_core.download.watchdog import _Attempt, _Session, _Watchdog
from faces_core.errors import Reason

logger = logging.getLogger(__name__)

CHUNK_SIZE: Final = 64 * 1024
_RETRY_STATUSES: Final = frozenset({408, 429})
_BINARY_TYPES: Final = frozenset({"application/octet-stream", "binary/octet-stream"})


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


class _Fetcher:
    """Downloads one URL with retries; shared by the worker threads of one run."""

    def __init__(
        self,
        store: ImageStore,
        settings: DownloadSettings,
        session: _Session,
        stop: threading.Event,
        watchdog: _Watchdog,
    ) -> None:
        self.store = store
        self.settings = settings
        self.session = session
        self.stop = stop
        self.watchdog = watchdog
        self.hosts = HostGuard(settings, session)
        self._dead_hosts: set[str] = set()

    @property
    def lookups(self) -> Counter[str]:
        """Resolver calls per host this run (one per host, but for retried failures without a proxy)."""
        return self.hosts.lookups

    def fetch(self, url: str) -> StoredImage:
        """Cached or downloaded image for ``url``: :meth:`from_cache`, else :meth:`download`.

        Raises:
            DownloadError: The URL failed for good.
            DownloadCancelled: The run is stopping.
        """
        cached = self.from_cache(url)
        return cached if cached is not None else self.download(url)

    def from_cache(self, url: str) -> StoredImage | None:
        """The stored image for ``url`` if the store has one that verifies; nothing is fetched.

        Raises:
            DownloadError: ``url`` is never fetched (empty, not http/https, no host): checked
                before the cache, so nothing but an http(s) URL is ever served from it.
            DownloadCancelled: The run is stopping.
        """
        if self.stop.is_set():
            raise DownloadCancelled("download stopped before this URL started")
        if not url.strip():
            raise DownloadError(Reason.UNREADABLE_FILE, "empty URL")
        split_fetchable(url)
        return self.store.lookup(url)

    def download(self, url: str) -> StoredImage:
        """Fetch ``url`` into the store (the cache was asked already: :meth:`from_cache`).

        Raises:
            DownloadError: The URL failed for good.
            DownloadCancelled: The run is stopping.
        """
        if self.stop.is_set():
            raise DownloadCancelled("download stopped before this URL started")
        _, host = split_fetchable(url)
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
                if host in self.hosts.unresolved and attempt == attempts - 1:
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
        with self.watchdog.watching(attempt):
            try:
                return self._follow(url, attempt)
            except DownloadCancelled:
                raise
            except Exception as exc:
                if attempt.why is not None:  # whatever the cut connection raised, say why it was cut
                    raise attempt.error() from exc
                raise

    def _follow(self, url: str, attempt: _Attempt) -> StoredImage:
        """GET ``url``, following redirects by hand so each hop's scheme and host are checked."""
        current = url
        seen = {url}
        proxies = dict(self.settings.proxies) if self.settings.proxies is not None else None
        for _hop in range(self.settings.max_redirects + 1):
            attempt.check()
            _, host = split_fetchable(current)
            self.hosts.check(current, host)
            left = max(attempt.deadline - time.monotonic(), 0.001)
            timeout = (min(self.settings.timeout_s, left), min(self.settings.timeout_s, left))
            resp = self.session.get_image(current, timeout, proxies)
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

    def _store(self, url: str, resp: requests.Response, attempt: _Attempt) -> StoredImage:
        """Check status and headers, then stream the body into the store under the deadline."""
        status = resp.status_code
        if status >= 400:
            retryable = status in _RETRY_STATUSES or status >= 500
            retry_after = retry_after_seconds(resp.headers.get("Retry-After"), self.settings.backoff_max_s)
            raise DownloadError(Reason.HTTP_ERROR, f"HTTP {status} {_phrase(status)}".rstrip(), retryable, retry_after)
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith("image/") and content_type not in _BINARY_TYPES:
            raise DownloadError(Reason.NOT_AN_IMAGE, f"content type {short(content_type, 60)}")
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
