"""A loopback HTTP server that answers image URLs, for tests, the demo and benchmarks.

The real TCS image hosts are gone and nothing here reaches the internet, so the pipeline is
exercised against this server instead. It works two ways at once:

* **origin**: ``GET /path`` answers the route registered for ``/path``;
* **proxy**: point ``http_proxy`` (or ``DownloadSettings(proxies=...)``)
  at :attr:`LoopbackServer.proxy_url` and a request for ``http://gone-host/x.jpg`` arrives
  with the absolute URL in its request line; it answers the route registered for that URL.

Routes can inject latency, transient failures, ``Retry-After``, redirects, wrong content
types, truncated or lying bodies, slow drips and endless bodies, and the server counts hits
per route so a test can prove that a second run downloaded nothing. Clients that hang up
mid-answer (a timeout, a rejected body) are expected and never print a traceback.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


@dataclass(slots=True)
class Route:
    """How the server answers one URL or path.

    Attributes:
        body: Bytes to send on success.
        content_type: ``Content-Type`` header on success.
        status: Status on success (200) or a permanent error status (404, 403, ...).
        delay: Seconds to sleep before answering (longer than a client timeout -> timeout).
        fail_times: Answer ``fail_status`` this many times first, then succeed.
        fail_status: Status of the injected transient failures (500, 503, 429).
        retry_after: ``Retry-After`` seconds sent with the transient failures.
        redirect_to: Answer 302 to this location instead of the body.
        declared_length: ``Content-Length`` to announce (to fake a truncated transfer, or a
            body longer than announced).
        chunk_size: Send the body in pieces of this many bytes (0: all at once).
        chunk_delay: Seconds between pieces: a slow drip that never trips a per-read timeout.
        drip_headers: Drip the status line and headers too, not only the body.
        endless: Send the body again and again, without ``Content-Length``, until the client
            hangs up (a body that never ends).
        hold_s: Keep the connection open this long after the body before closing it (with a
            ``declared_length`` beyond the body: a server that stops sending mid-body).
    """

    body: bytes = b""
    content_type: str = "image/jpeg"
    status: int = 200
    delay: float = 0.0
    fail_times: int = 0
    fail_status: int = 500
    retry_after: float | None = None
    redirect_to: str | None = None
    declared_length: int | None = None
    chunk_size: int = 0
    chunk_delay: float = 0.0
    drip_headers: bool = False
    endless: bool = False
    hold_s: float = 0.0


_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
"""What a write or read raises when the client hung up: expected, answered by closing."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request stderr noise."""

    def do_GET(self) -> None:
        owner = self.server.owner
        key, route = owner.lookup(self.path, self.headers.get("Host", ""))
        attempt = owner.record_hit(key)
        if route is None:
            self._send(404, b"not found", "text/plain")
            return
        if route.delay and owner.wait(route.delay):
            return
        if attempt <= route.fail_times:
            headers = {}
            if route.retry_after is not None:
                headers["Retry-After"] = f"{route.retry_after:g}"
            self._send(route.fail_status, b"injected failure", "text/plain", headers)
            return
        if route.redirect_to is not None:
            self._send(302, b"", "text/plain", {"Location": route.redirect_to})
            return
        if route.chunk_size or route.chunk_delay or route.endless:
            self._stream(route)
        else:
            self._send(route.status, route.body, route.content_type, length=route.declared_length)
        if route.hold_s:
            owner.wait(route.hold_s)

    def _stream(self, route: Route) -> None:
        """Answer in timed pieces (drip) or forever (endless); stop when the client hangs up."""
        owner = self.server.owner
        lines = [f"{self.protocol_version} {route.status} {self.responses.get(route.status, ('',))[0]}"]
        lines.append(f"Content-Type: {route.content_type}")
        if route.endless:
            lines.append("Connection: close")
        else:
            lines.append(
                f"Content-Length: {len(route.body) if route.declared_length is None else route.declared_length}"
            )
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.close_connection = True
        size = route.chunk_size or len(route.body) or 1
        try:
            if not route.drip_headers:
                self.wfile.write(head)
                head = b""
            data = head + route.body
            while True:
                for start in range(0, len(data), size):
                    self.wfile.write(data[start : start + size])
                    if route.chunk_delay and owner.wait(route.chunk_delay):
                        return
                if not route.endless or not route.body:
                    return
                data = route.body
                if owner.stopping:
                    return
        except _CLIENT_GONE:
            return  # the client gave up (deadline, too large): expected

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if length is not None and length != len(body):
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except _CLIENT_GONE:
            # The client gave up (timeout test); nothing left to answer.
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 refuses bursts from a 32-thread client
    owner: LoopbackServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hung up (expected: timeouts, aborted bodies); print the rest."""
        if isinstance(sys.exc_info()[1], _CLIENT_GONE):
            return
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        """End kept-alive client connections too, so no handler answers after stop()."""
        with self._open_lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class LoopbackServer:
    """Threaded HTTP server on 127.0.0.1 that serves registered routes.

    Example:
        >>> with LoopbackServer() as server:
        ...     server.add("/a.jpg", Route(body=jpeg_bytes))
        ...     requests.get(server.url("/a.jpg")).content == jpeg_bytes
    """

    def __init__(self, routes: dict[str, Route] | None = None, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def proxy_url(self) -> str:
        """Use as ``http_proxy`` so requests for any host arrive here."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of a path on this server."""
        return f"{self.proxy_url}/{path.lstrip('/')}"

    def add(self, key: str, route: Route) -> None:
        """Register a route for a path (``/x.jpg``) or a full URL (``http://host/x.jpg``)."""
        with self._lock:
            self.routes[key] = route

    def lookup(self, raw_path: str, host: str) -> tuple[str, Route | None]:
        """Find the route for a request line target, trying full URL first, then path."""
        with self._lock:
            if raw_path.startswith(("http://", "https://")):
                if raw_path in self.routes:
                    return raw_path, self.routes[raw_path]
                parts = urlsplit(raw_path)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
            else:
                path = raw_path
                full = f"http://{host}{raw_path}"
                if full in self.routes:
                    return full, self.routes[full]
            return path, self.routes.get(path)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` began: handlers that delay or drip give up."""
        return self._stopping.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep in a handler, cut short by :meth:`stop`; True when the server is stopping."""
        return self._stopping.wait(seconds)

    def record_hit(self, key: str) -> int:
        """Count a request and return how many times this key has been asked for."""
        with self._lock:
            self.hits[key] += 1
            return self.hits[key]

    def start(self) -> LoopbackServer:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.close_open_connections()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
