"""Total deadlines and prompt stops: attempts whose connections a watchdog thread can cut.

The session's urllib3 connections register with the calling worker's current attempt; the
watchdog cuts them when the attempt's deadline passes or the run stops, so a server that drips a
byte every few seconds cannot hold a worker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar, merge_cookies
from requests.models import PreparedRequest
from requests.sessions import merge_setting
from requests.utils import get_netrc_auth

from faces_core.download.results import DownloadCancelled, DownloadError
from faces_core.download.settings import DownloadSettings
from faces_core.download.urlsafety import EnvProxies
from faces_core.errors import Reason

if TYPE_CHECKING:
    from requests.sessions import _Settings

_WATCHDOG_POLL_S: Final = 0.1
"""How often the watchdog looks at the stop event between deadlines."""


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


class _WatchedHTTPSConnection(_WatchedHTTPConnection, urllib3.connection.HTTPSConnection):
    """HTTPS twin of :class:`_WatchedHTTPConnection`: its ``connect`` and ``request`` register,
    then go on to :class:`~urllib3.connection.HTTPSConnection`'s (next in the MRO)."""


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
        self._wakes_at = 0.0  # when the watchdog thread wakes next (time.monotonic()), under _cond
        self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)
        self._thread.start()

    def watch(self, attempt: _Attempt) -> None:
        with self._cond:
            self._attempts.add(attempt)
            # Woken only for a deadline before its next look (at most _WATCHDOG_POLL_S away):
            # waking the thread for every attempt cost a thread switch per URL.
            if attempt.deadline < self._wakes_at:
                self._cond.notify()
        if self._stop.is_set():
            attempt.abort("stop")

    def unwatch(self, attempt: _Attempt) -> None:
        with self._cond:
            self._attempts.discard(attempt)

    @contextlib.contextmanager
    def watching(self, attempt: _Attempt) -> Iterator[_Attempt]:
        """Watch ``attempt`` while the calling worker thread makes it: the connections that
        thread uses meanwhile register with it, so a cut reaches them."""
        _current.attempt = attempt
        self.watch(attempt)
        try:
            yield attempt
        finally:
            attempt.finish()
            self.unwatch(attempt)
            _current.attempt = None

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
                wait = min(max(wait, 0.0), _WATCHDOG_POLL_S)
                self._wakes_at = now + wait
                self._cond.wait(wait)


class _Session(requests.Session):
    """A session whose per-request work is what one image GET needs, with requests' rules.

    * The environment's proxies are looked up once per host (:class:`EnvProxies`), not read
      and parsed from the whole environment twice per request; the rest of ``trust_env``
      (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) is as in requests.
    * :meth:`get_image` prepares the GET itself: requests' ``prepare_request`` merges the
      session's headers and params into each request through runtime-checked Protocol
      ``isinstance`` calls and looks for a ``.netrc`` per request (85 of its 130 us here).
    """

    def __init__(self) -> None:
        super().__init__()
        self.env_proxies = EnvProxies()
        self._netrc_auth: dict[str, tuple[str, str] | None] = {}

    def get_image(self, url: str, timeout: tuple[float, float], proxies: dict[str, str] | None) -> requests.Response:
        """``self.get(url, stream=True, timeout=timeout, proxies=proxies, allow_redirects=False)``.

        The same request: the session's headers (``None`` values dropped) and cookies, the
        ``.netrc`` credentials of the host when ``trust_env`` (looked up once per host), the
        proxies, ``verify`` and ``cert`` of :meth:`merge_environment_settings`. A session
        with params, auth or response hooks of its own goes through requests' path.
        """
        if self.params or self.auth is not None or any(self.hooks.values()):
            return self.get(url, stream=True, timeout=timeout, proxies=proxies, allow_redirects=False)
        auth = None
        if self.trust_env:
            host = urlsplit(url).netloc
            if host not in self._netrc_auth:
                if len(self._netrc_auth) >= 10_000:
                    self._netrc_auth.clear()
                self._netrc_auth[host] = get_netrc_auth(url)
            auth = self._netrc_auth[host]
        prepared = PreparedRequest()
        prepared.prepare(
            method="GET",
            url=url,
            headers={k: v for k, v in self.headers.items() if v is not None},
            cookies=merge_cookies(RequestsCookieJar(), self.cookies),
            auth=auth,
        )
        settings = self.merge_environment_settings(
            prepared.url, proxies if proxies is not None else {}, True, None, None
        )
        return self.send(prepared, timeout=timeout, allow_redirects=False, **settings)

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: MutableMapping[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: str | tuple[str, str] | None,
    ) -> _Settings:
        if not self.trust_env or not isinstance(url, str):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        if proxies is not None:
            for key, value in self.env_proxies.for_url(url, proxies.get("no_proxy")).items():
                proxies.setdefault(key, value)
        if verify is True or verify is None:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or verify
        if proxies is not None and not self.proxies:  # merge_setting's result, without its Protocol checks
            merged: MutableMapping[str, str] = {k: v for k, v in proxies.items() if v is not None}
        else:
            merged = merge_setting(proxies, self.proxies)
        settings: _Settings = {
            "proxies": merged,
            "stream": merge_setting(stream, self.stream),
            "verify": merge_setting(verify, self.verify),
            "cert": merge_setting(cert, self.cert),
        }
        return settings


def make_session(settings: DownloadSettings) -> _Session:
    """A pooled session: one connection per worker, no hidden retries or redirects (we do our own).

    The session is shared by the worker threads; only connection pools (thread-safe in
    urllib3) change while downloading. Its connections register with the calling worker's
    attempt so the watchdog can cut them.
    """
    session = _Session()
    adapter = _WatchedAdapter(pool_connections=settings.concurrency, pool_maxsize=settings.concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = settings.max_redirects
    # Images do not compress; identity keeps Content-Length comparable with the body.
    session.headers.update(
        {"User-Agent": settings.user_agent, "Accept-Encoding": "identity", "Accept": "image/*,*/*;q=0.8"}
    )
    return session
