"""Hostile image URLs: every case ends stored or rejected with its exact reason, in bounded time.

A TCS JSON may come from anyone, so its URLs are treated as hostile: other schemes than
http(s), loopback and private hosts, redirect tricks, bodies that never end or drip, lying
headers and absurd ``Retry-After`` values. All traffic goes to a real loopback server (as an
origin, or as a proxy for hosts that do not exist); nothing is mocked. The count of cases is
quoted in the README's reliability section.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from faces_core.download import (
    DownloadReport,
    DownloadSettings,
    ImageStore,
    download_all,
    is_public_address,
)
from faces_core.errors import Reason
from faces_core.sample import encode, face_image
from faces_core.testing import LoopbackServer, Route
from flows.params import load_params
from flows.params.ingest import ingest_settings
from tests.conftest import REPO

KIB = 1024
# Short deadlines so that every case ends in seconds; the loopback server is reached
# directly, so private hosts are allowed except where a case tests the refusal.
BASE = DownloadSettings(
    concurrency=4,
    timeout_s=1.0,
    attempt_timeout_s=1.5,
    url_timeout_s=3.0,
    retries=1,
    backoff_s=0.01,
    backoff_max_s=0.2,
    max_bytes=256 * KIB,
    max_redirects=5,
    allow_private_hosts=True,
)
REFUSING = dataclasses.replace(BASE, allow_private_hosts=False)
SECRET = b"SECRET-TOKEN-do-not-log"
GONE = "http://images.gone.invalid"  # a host that resolves nowhere: reached through the proxy


def _jpeg(seed: int, size: int = 40) -> bytes:
    return encode(face_image(size, size, [(4, 4, size - 4, size - 4)], random.Random(seed)))


@dataclass
class Case:
    """One hostile URL: how the server answers, what the download must end as, how fast.

    Attributes:
        name: Test id.
        url: The URL, given the server (paths registered by ``routes``).
        routes: Routes to register, keys may use ``{base}`` (the server's origin URL).
        expect: A reason code, or None for "stored".
        settings: Download settings of the case.
        via_proxy: Send requests through the loopback server as a proxy.
        max_s: Wall-time bound of the download.
        hits: Expected server hits per route key (formatted like ``routes``).
        stored_size: Expected stored size when stored.
    """

    name: str
    url: Callable[[str], str]
    routes: dict[str, Route] = field(default_factory=dict)
    expect: Reason | None = None
    settings: DownloadSettings = BASE
    via_proxy: bool = False
    max_s: float = 2.0
    hits: dict[str, int] = field(default_factory=dict)
    stored_size: int | None = None


def _path(path: str) -> Callable[[str], str]:
    return lambda base: f"{base}{path}"


def _const(url: str) -> Callable[[str], str]:
    return lambda base: url


def _port(base: str) -> str:
    return base.rsplit(":", 1)[1]


BODY = _jpeg(1)
DRIP = _jpeg(2, size=64)  # ~2 KB: at one byte per 0.1 s it would take minutes

CASES = [
    # --- schemes other than http(s): refused before anything is read or requested --------
    Case("file-url", _const("file:///etc/passwd"), expect=Reason.UNSUPPORTED_SCHEME),
    Case("file-url-localhost", _const("file://localhost/etc/hostname"), expect=Reason.UNSUPPORTED_SCHEME),
    Case("bare-absolute-path", _const("/etc/passwd"), expect=Reason.UNSUPPORTED_SCHEME),
    Case("bare-relative-path", _const("images/../../etc/passwd"), expect=Reason.UNSUPPORTED_SCHEME),
    Case("windows-path", _const("C:\\Windows\\win.ini"), expect=Reason.UNSUPPORTED_SCHEME),
    Case("scheme-relative", lambda b: "//" + b.split("//", 1)[1] + "/ok.jpg", expect=Reason.UNSUPPORTED_SCHEME),
    Case("ftp", lambda b: f"ftp://127.0.0.1:{_port(b)}/ok.jpg", expect=Reason.UNSUPPORTED_SCHEME),
    Case("gopher", lambda b: f"gopher://127.0.0.1:{_port(b)}/_GET%20/ok.jpg", expect=Reason.UNSUPPORTED_SCHEME),
    Case("data", _const("data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ=="), expect=Reason.UNSUPPORTED_SCHEME),
    Case("javascript", _const("javascript:alert(1)"), expect=Reason.UNSUPPORTED_SCHEME),
    Case("upper-case-http-is-fine", lambda b: b.replace("http", "HTTP") + "/ok.jpg", routes={"/ok.jpg": Route(BODY)}),
    # --- loopback and private hosts, refused when allow_private_hosts is false ------------
    Case("loopback-ip", _path("/ok.jpg"), expect=Reason.REFUSED_HOST, settings=REFUSING),
    Case("localhost", lambda b: f"http://localhost:{_port(b)}/ok.jpg", expect=Reason.REFUSED_HOST, settings=REFUSING),
    Case("ipv6-loopback", lambda b: f"http://[::1]:{_port(b)}/ok.jpg", expect=Reason.REFUSED_HOST, settings=REFUSING),
    Case(
        "ipv4-mapped-ipv6",
        lambda b: f"http://[::ffff:127.0.0.1]:{_port(b)}/ok.jpg",
        expect=Reason.REFUSED_HOST,
        settings=REFUSING,
    ),
    Case("decimal-ip", lambda b: f"http://2130706433:{_port(b)}/ok.jpg", expect=Reason.REFUSED_HOST, settings=REFUSING),
    Case("short-ip", lambda b: f"http://127.1:{_port(b)}/ok.jpg", expect=Reason.REFUSED_HOST, settings=REFUSING),
    Case(
        "loopback-ip-through-proxy",
        _path("/ok.jpg"),
        expect=Reason.REFUSED_HOST,
        settings=REFUSING,
        via_proxy=True,
    ),
    Case(
        "unresolvable-host-through-proxy-is-left-to-the-proxy",
        _const(f"{GONE}/fine.jpg"),
        routes={f"{GONE}/fine.jpg": Route(BODY)},
        settings=REFUSING,
        via_proxy=True,
        hits={f"{GONE}/fine.jpg": 1},
    ),
    # --- redirects ------------------------------------------------------------------------
    Case(
        "redirect-to-refused-host",
        _const(f"{GONE}/hop.jpg"),
        routes={f"{GONE}/hop.jpg": Route(redirect_to="{base}/secret.jpg"), "/secret.jpg": Route(BODY)},
        expect=Reason.REFUSED_HOST,
        settings=REFUSING,
        via_proxy=True,
        hits={f"{GONE}/hop.jpg": 1, "/secret.jpg": 0},
    ),
    Case(
        "redirect-to-file",
        _path("/to-file.jpg"),
        routes={"/to-file.jpg": Route(redirect_to="file:///etc/passwd")},
        expect=Reason.UNSUPPORTED_SCHEME,
    ),
    Case(
        "redirect-to-data",
        _path("/to-data.jpg"),
        routes={"/to-data.jpg": Route(redirect_to="data:image/jpeg;base64,/9j/4AAQ")},
        expect=Reason.UNSUPPORTED_SCHEME,
    ),
    Case(
        "redirect-to-itself",
        _path("/self.jpg"),
        routes={"/self.jpg": Route(redirect_to="/self.jpg")},
        expect=Reason.TOO_MANY_REDIRECTS,
        hits={"/self.jpg": 1},
    ),
    Case(
        "redirect-loop-of-two",
        _path("/ping.jpg"),
        routes={"/ping.jpg": Route(redirect_to="/pong.jpg"), "/pong.jpg": Route(redirect_to="/ping.jpg")},
        expect=Reason.TOO_MANY_REDIRECTS,
        hits={"/ping.jpg": 1, "/pong.jpg": 1},
    ),
    Case(
        "redirect-chain-past-the-limit",
        _path("/chain/0.jpg"),
        routes={f"/chain/{i}.jpg": Route(redirect_to=f"/chain/{i + 1}.jpg") for i in range(8)},
        expect=Reason.TOO_MANY_REDIRECTS,
        hits={f"/chain/{i}.jpg": 1 if i <= BASE.max_redirects else 0 for i in range(8)},
    ),
    Case(
        "redirect-within-the-limit",
        _path("/short/0.jpg"),
        routes={
            **{f"/short/{i}.jpg": Route(redirect_to=f"/short/{i + 1}.jpg") for i in range(3)},
            "/short/3.jpg": Route(BODY),
        },
        stored_size=len(BODY),
    ),
    # --- bodies ---------------------------------------------------------------------------
    Case(
        "endless-body",
        _path("/endless.jpg"),
        routes={"/endless.jpg": Route(BODY, endless=True)},
        expect=Reason.TOO_LARGE,
        hits={"/endless.jpg": 1},
    ),
    Case(
        "declared-too-large",
        _path("/huge.jpg"),
        routes={"/huge.jpg": Route(BODY, declared_length=10**12)},
        expect=Reason.TOO_LARGE,
        hits={"/huge.jpg": 1},
    ),
    Case(
        "slow-drip-body",
        _path("/drip.jpg"),
        routes={"/drip.jpg": Route(DRIP, chunk_size=1, chunk_delay=0.1)},
        expect=Reason.TIMEOUT,
        max_s=BASE.url_timeout_s + 1.5,
        hits={"/drip.jpg": 2},
    ),
    Case(
        "slow-drip-headers",
        _path("/drip-head.jpg"),
        routes={"/drip-head.jpg": Route(DRIP, chunk_size=1, chunk_delay=0.1, drip_headers=True)},
        expect=Reason.TIMEOUT,
        max_s=BASE.url_timeout_s + 1.5,
        hits={"/drip-head.jpg": 2},
    ),
    Case(
        "never-answers",
        _path("/mute.jpg"),
        routes={"/mute.jpg": Route(BODY, delay=30.0)},
        expect=Reason.TIMEOUT,
        max_s=BASE.url_timeout_s + 1.5,
        hits={"/mute.jpg": 2},
    ),
    Case(
        "content-length-shorter-than-body",
        _path("/short-cl.jpg"),
        routes={"/short-cl.jpg": Route(BODY, declared_length=100)},
        stored_size=100,  # HTTP says the body is 100 bytes; validation rejects the cut JPEG
    ),
    Case(
        "content-length-longer-then-close",
        _path("/long-cl.jpg"),
        routes={"/long-cl.jpg": Route(BODY, declared_length=len(BODY) + 500)},
        expect=Reason.CONNECTION_ERROR,
        hits={"/long-cl.jpg": 2},
    ),
    Case(
        "content-length-longer-then-stall",
        _path("/stall-cl.jpg"),
        routes={"/stall-cl.jpg": Route(BODY, declared_length=len(BODY) + 500, hold_s=30.0)},
        expect=Reason.TIMEOUT,
        max_s=2 * BASE.timeout_s + 1.5,
        hits={"/stall-cl.jpg": 2},
    ),
    Case(
        "html-page-as-image",
        _path("/page.jpg"),
        routes={"/page.jpg": Route(b"<!doctype html><p>" + SECRET + b"</p>" + b" " * 64, content_type="image/jpeg")},
        expect=Reason.NOT_AN_IMAGE,
    ),
    Case(
        "text-as-octet-stream",
        _path("/text.bin"),
        routes={"/text.bin": Route(SECRET * 4, content_type="application/octet-stream")},
        expect=Reason.NOT_AN_IMAGE,
    ),
    # --- Retry-After ----------------------------------------------------------------------
    Case(
        "huge-retry-after-then-success",
        _path("/busy.jpg"),
        routes={"/busy.jpg": Route(BODY, fail_times=1, fail_status=429, retry_after=10**9)},
        max_s=BASE.backoff_max_s + 1.0,
        hits={"/busy.jpg": 2},
        stored_size=len(BODY),
    ),
    Case(
        "huge-retry-after-forever",
        _path("/down.jpg"),
        routes={"/down.jpg": Route(BODY, fail_times=99, fail_status=503, retry_after=10**9)},
        expect=Reason.HTTP_ERROR,
        max_s=BASE.backoff_max_s + 1.0,
        hits={"/down.jpg": 2},
    ),
    Case(
        "retry-after-past-the-url-deadline",
        _path("/later.jpg"),
        routes={"/later.jpg": Route(BODY, fail_times=1, fail_status=429, retry_after=50)},
        expect=Reason.HTTP_ERROR,
        settings=dataclasses.replace(BASE, backoff_max_s=100.0, url_timeout_s=2.0),
        max_s=1.0,  # no sleep at all: the wait would pass the URL deadline
        hits={"/later.jpg": 1},
    ),
]


pytestmark = pytest.mark.usefixtures("no_env_proxy")  # loopback traffic must not go to an env proxy


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def _run(
    server: LoopbackServer, case: Case, store: ImageStore, settings: DownloadSettings
) -> tuple[str, DownloadReport, float]:
    base = server.url("").rstrip("/")
    routes = {key.replace("{base}", base): route for key, route in case.routes.items()}
    for key, route in routes.items():
        if route.redirect_to is not None:
            route = dataclasses.replace(route, redirect_to=route.redirect_to.replace("{base}", base))
        server.add(key, route)
    if case.via_proxy:
        settings = dataclasses.replace(settings, proxies={"http": server.proxy_url, "https": server.proxy_url})
    url = case.url(base)
    start = time.monotonic()
    report = download_all([url], store, settings)
    return url, report, time.monotonic() - start


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_url(server: LoopbackServer, tmp_path: Path, case: Case) -> None:
    store = ImageStore(tmp_path / "store")
    hits_before = dict(server.hits)

    url, report, seconds = _run(server, case, store, case.settings)

    assert seconds < case.max_s, f"{case.name} took {seconds:.2f}s"
    if case.expect is None:
        assert report.rejections == []
        stored = report.results[url]
        assert stored.size == (case.stored_size or len(BODY))
        assert stored.path.read_bytes() == (BODY[: stored.size])
    else:
        assert report.results == {}
        assert [(r.item, r.reason, r.stage) for r in report.rejections] == [(url, case.expect, "download")]
        message = report.rejections[0].message
        assert SECRET.decode() not in message and "root:" not in message
        assert list(store.root.glob("??/*")) == [] and len(store) == 0
    assert list(store.partial_dir.iterdir()) == []
    base = server.url("").rstrip("/")
    for key, hits in case.hits.items():
        key = key.replace("{base}", base)
        assert server.hits[key] - hits_before.get(key, 0) == hits, key
    if case.expect in (Reason.UNSUPPORTED_SCHEME, Reason.REFUSED_HOST) and not case.routes:
        assert dict(server.hits) == hits_before  # nothing was requested at all


def test_hostile_urls_together_finish_within_their_deadlines(server: LoopbackServer, tmp_path: Path) -> None:
    """All slow cases at once on four workers: the run is bounded by deadlines, not by servers."""
    slow = [c for c in CASES if c.expect == Reason.TIMEOUT]
    routes = {k: r for c in slow for k, r in c.routes.items()}
    base = server.url("").rstrip("/")
    for key, route in routes.items():
        server.add(key, route)
    urls = [c.url(base) for c in slow]
    start = time.monotonic()
    report = download_all(urls, ImageStore(tmp_path / "s"), BASE)
    assert time.monotonic() - start < BASE.url_timeout_s + 2.0
    assert {r.item: r.reason for r in report.rejections} == dict.fromkeys(urls, Reason.TIMEOUT)


def test_slow_drip_times_out_with_deadlines_from_params(server: LoopbackServer, tmp_path: Path) -> None:
    """Defect: a host dripping a byte at a time held an ingest for 15 minutes.

    The deadlines come from the params.yaml ``download`` section, as the flow reads them.
    """
    settings = ingest_settings(
        {
            "download": {
                "timeout_s": 2.0,  # each byte arrives well within the per-read timeout
                "attempt_timeout_s": 0.8,
                "url_timeout_s": 2.0,
                "retries": 5,
                "backoff_s": 0.01,
                "allow_private_hosts": True,
            }
        }
    ).download
    server.add("/params-drip.jpg", Route(DRIP, chunk_size=1, chunk_delay=0.2))
    url = server.url("/params-drip.jpg")
    start = time.monotonic()
    report = download_all([url], ImageStore(tmp_path / "s"), settings)
    seconds = time.monotonic() - start
    assert [(r.item, r.reason) for r in report.rejections] == [(url, Reason.TIMEOUT)]
    assert "download.attempt_timeout_s" in report.rejections[0].message or "url_timeout_s" in (
        report.rejections[0].message
    )
    assert 1.6 <= seconds < 3.0  # the URL deadline, not 5 retries x a 400 s drip
    assert server.hits["/params-drip.jpg"] == 3  # 0.8 + 0.8 + the 0.4 s left of the URL's 2 s


def test_file_url_is_not_read_and_its_bytes_never_reach_the_log(tmp_path: Path) -> None:
    """Defect: file:// URLs were read from disk and their first bytes copied into the log."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(SECRET * 8)
    image = tmp_path / "real.jpg"
    image.write_bytes(BODY)  # a real image is refused as well: the JSON may not read the disk
    urls = [secret.as_uri(), str(secret), image.as_uri(), str(image)]
    store = ImageStore(tmp_path / "store")

    report = download_all(urls, store, BASE)

    assert {r.item: r.reason for r in report.rejections} == dict.fromkeys(urls, Reason.UNSUPPORTED_SCHEME)
    assert all(SECRET.decode()[:6] not in r.message for r in report.rejections)
    assert report.results == {} and len(store) == 0 and list(store.root.glob("??/*")) == []


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False), ("10.1.2.3", False),
     ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
     ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("fc00::1", False),
     ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False)],
)  # fmt: skip
def test_public_address_rule(address: str, public: bool) -> None:
    """The refusal rule on addresses no test may reach (no traffic: a pure check)."""
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_private_hosts_are_refused_by_default_in_code_and_params() -> None:
    assert DownloadSettings().allow_private_hosts is False
    assert load_params(REPO / "params.yaml")["download"]["allow_private_hosts"] is False
