"""Which URLs may be fetched: only ``http``/``https`` with a host, never a non-public address
(unless allowed), and which hosts are left to a proxy to resolve."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import Counter
from typing import Final
from urllib.parse import SplitResult, urlsplit

import requests
import requests.utils

from faces_core.download.results import DownloadError
from faces_core.download.settings import DownloadSettings
from faces_core.errors import Reason

FETCHED_SCHEMES: Final = frozenset({"http", "https"})
"""The only URL schemes fetched; anything else (file, ftp, data, a bare path) is refused."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def short(text: str, limit: int = 80) -> str:
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
        what = f"scheme {short(scheme, 20)}" if scheme else "a URL without a scheme (a local path?)"
        raise DownloadError(
            Reason.UNSUPPORTED_SCHEME,
            f"only http:// and https:// image URLs are fetched, not {what}; serve the images over HTTP, "
            "or ingest a local folder as an IMFDB-style root",
        )
    if not host:
        raise DownloadError(Reason.UNREADABLE_FILE, "invalid URL: no host name")
    return parts, host


def is_public_address(address: Address) -> bool:
    """Whether an address is on the public internet (not loopback, private, link-local, ...)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is not None:
            return is_public_address(inner)
    return address.is_global and not address.is_multicast


class EnvProxies:
    """The environment's proxies for a URL (``http_proxy``, ``no_proxy``, ...: requests'
    ``trust_env`` rules), looked up once per scheme, host and port of a run.

    requests reads and parses the whole environment for every request (twice); a run asks
    about the same few hosts again and again. Shared by threads (a lost race only looks up
    twice); the environment is read as it is when a host is first asked about.
    """

    _MAX_ENTRIES: Final = 10_000

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str | None], dict[str, str]] = {}

    def for_url(self, url: str, no_proxy: str | None = None) -> dict[str, str]:
        """What ``requests.utils.get_environ_proxies(url, no_proxy)`` returns (do not change it)."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, no_proxy)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= self._MAX_ENTRIES:
                self._cache.clear()
            found = self._cache[key] = requests.utils.get_environ_proxies(url, no_proxy=no_proxy)
        return found


class HostGuard:
    """Refuses hosts that are or resolve to non-public addresses, resolving each host once a run.

    Shared by the worker threads of one run.

    Args:
        settings: ``allow_private_hosts`` turns the guard off; ``proxies`` decides which hosts
            a proxy resolves.
        session: Its ``trust_env`` says whether the environment's proxies apply too.
    """

    def __init__(self, settings: DownloadSettings, session: requests.Session) -> None:
        self.settings = settings
        self.session = session
        self.unresolved: set[str] = set()
        """Hosts that did not resolve here and had no proxy to leave them to."""
        self.lookups: Counter[str] = Counter()
        """Resolver calls per host this run (one per host, but for retried failures without a proxy)."""
        self._addresses: dict[str, list[Address]] = {}
        self._left_to_proxy: set[str] = set()
        self._host_locks: dict[str, threading.Lock] = {}
        self._host_locks_lock = threading.Lock()
        self._env_proxies = EnvProxies()

    def check(self, url: str, host: str) -> None:
        """Refuse a host that is or resolves to a non-public address, unless allowed.

        A name that does not resolve here is left to the proxy when one is used (the proxy
        resolves it), and is a (retried) connection error otherwise. The name is resolved
        before requests resolves it again to connect: a DNS answer that changes in between
        (rebinding) is not caught; a proxy with its own rules closes that gap.
        """
        if self.settings.allow_private_hosts:
            return
        proxied = self.proxy_for(url) is not None
        # Through a proxy, a name this machine cannot resolve is asked about once per run:
        # asking the resolver per URL crawled (an offline resolver took 5 s a lookup here).
        addresses = self.resolve(host, remember_failure=proxied)
        if addresses is None:
            if proxied:
                return
            self.unresolved.add(host)
            raise DownloadError(Reason.CONNECTION_ERROR, f"cannot resolve host {short(host)}", retryable=True)
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise DownloadError(
                Reason.REFUSED_HOST,
                f"host {short(host)} is or resolves to the non-public address {refused[0]}; set "
                "download.allow_private_hosts: true in params.yaml if this JSON is trusted",
            )

    def resolve(self, host: str, remember_failure: bool = False) -> list[Address] | None:
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

    def proxy_for(self, url: str) -> str | None:
        """The proxy requests will use for ``url`` (explicit setting, then the environment)."""
        proxies = dict(self.settings.proxies or {})
        if self.session.trust_env:
            for key, value in self._env_proxies.for_url(url, no_proxy=proxies.get("no_proxy")).items():
                proxies.setdefault(key, value)
        return requests.utils.select_proxy(url, proxies)
