"""How a download run talks to the network: :class:`DownloadSettings` (``params.yaml``'s ``download``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from faces_core import __version__

MIB: Final = 1024 * 1024


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
