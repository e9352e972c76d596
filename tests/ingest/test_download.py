"""download_all against the real loopback server: retries, failures, proxy, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from faces_core.download import (
    MANIFEST_NAME,
    DownloadError,
    DownloadSettings,
    ImageStore,
    download_all,
    retry_after_seconds,
    sniff_image_type,
)
from faces_core.download import pool as download_pool
from faces_core.download.store import _HOST_TAG
from faces_core.errors import Reason
from faces_core.sample import encode, face_image
from faces_core.testing import LoopbackServer, Route

# The server is on loopback, which the default settings refuse (see tests/reliability).
FAST = DownloadSettings(
    concurrency=8, timeout_s=2.0, retries=2, backoff_s=0.01, backoff_max_s=0.05, allow_private_hosts=True
)


def _jpeg(seed: int, size: int = 32) -> bytes:
    return encode(face_image(size, size, [(4, 4, size - 4, size - 4)], random.Random(seed)))


def _png(seed: int) -> bytes:
    return encode(face_image(24, 24, [(2, 2, 20, 20)], random.Random(seed)), "PNG")


pytestmark = pytest.mark.usefixtures("no_env_proxy")  # loopback traffic must not go to an env proxy


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    """One server for the module (stopping one takes its 0.5 s poll); tests use distinct paths."""
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def _stored_files(root: Path) -> list[Path]:
    return [p for p in root.glob("??/*") if p.is_file()]


def _reasons(report: object) -> dict[str, Reason]:
    return {r.item: r.reason for r in report.rejections}  # type: ignore[attr-defined]


def test_many_urls_concurrently_with_progress(server: LoopbackServer, store: ImageStore) -> None:
    bodies = {f"/img/{i}.jpg": _jpeg(i) for i in range(40)}
    for path, body in bodies.items():
        server.add(path, Route(body=body))
    urls = [server.url(p) for p in bodies]
    calls: list[tuple[int, int]] = []

    report = download_all([*urls, urls[0], urls[5]], store, FAST, progress=lambda d, t: calls.append((d, t)))

    assert report.rejections == []
    assert list(report.results) == urls  # deduplicated, input order
    assert calls == [(i, 40) for i in range(1, 41)]
    assert [server.hits[p] for p in bodies] == [1] * 40
    for path, url in zip(bodies, urls, strict=True):
        stored = report.results[url]
        assert stored.path.read_bytes() == bodies[path]
        assert stored.path.suffix == ".jpg" and stored.content_type == "image/jpeg"
        assert stored.path.parent.name == stored.sha256[:2] and not stored.from_cache
    assert report.downloaded == 40 and report.cached == 0


def test_urls_are_handed_to_the_threads_in_a_bounded_window(
    server: LoopbackServer, store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million-URL list must not become a million futures: at most SUBMIT_WINDOW per thread wait."""
    bodies = {f"/window/{i}.png": _png(1000 + i) for i in range(60)}
    for path, body in bodies.items():
        server.add(path, Route(body=body, delay=0.005))
    urls = [server.url(p) for p in bodies]
    outstanding, peak = [0], [0]

    class Counting(download_pool.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            future = super().submit(fn, *args, **kwargs)
            outstanding[0] += 1
            peak[0] = max(peak[0], outstanding[0])
            future.add_done_callback(lambda _: outstanding.__setitem__(0, outstanding[0] - 1))
            return future

    monkeypatch.setattr(download_pool, "ThreadPoolExecutor", Counting)
    settings = dataclasses.replace(FAST, concurrency=2)
    report = download_all(urls, store, settings)

    assert list(report.results) == urls and report.rejections == []
    assert 2 <= peak[0] <= download_pool.SUBMIT_WINDOW * settings.concurrency


def test_same_bytes_at_two_urls_stored_once(server: LoopbackServer, store: ImageStore) -> None:
    body = _png(1)
    server.add("/same/a", Route(body=body, content_type="application/octet-stream"))
    server.add("/same/b", Route(body=body, content_type=""))  # missing type: sniffed
    report = download_all([server.url("/same/a"), server.url("/same/b")], store, FAST)
    a, b = report.results[server.url("/same/a")], report.results[server.url("/same/b")]
    assert a.path == b.path and a.path.suffix == ".png" and a.content_type == "image/png"
    assert _stored_files(store.root) == [a.path]


def test_http_404_is_not_retried(server: LoopbackServer, store: ImageStore) -> None:
    server.add("/ok.jpg", Route(body=_jpeg(1)))
    server.add("/missing.jpg", Route(body=b"nope", status=404, content_type="text/plain"))
    urls = [server.url("/missing.jpg"), server.url("/ok.jpg")]
    report = download_all(urls, store, FAST)
    assert list(report.results) == [urls[1]]
    (rejection,) = report.rejections
    assert (rejection.item, rejection.reason, rejection.stage) == (urls[0], Reason.HTTP_ERROR, "download")
    assert "404" in rejection.message and rejection.source == "tcs"
    assert server.hits["/missing.jpg"] == 1


def test_transient_500_then_success(server: LoopbackServer, store: ImageStore) -> None:
    server.add("/flaky.jpg", Route(body=_jpeg(2), fail_times=2, fail_status=500))
    report = download_all([server.url("/flaky.jpg")], store, FAST)
    assert report.rejections == [] and server.hits["/flaky.jpg"] == 3


def test_persistent_503_becomes_http_error_after_retries(server: LoopbackServer, store: ImageStore) -> None:
    server.add("/down.jpg", Route(fail_times=99, fail_status=503))
    report = download_all([server.url("/down.jpg")], store, FAST)
    assert _reasons(report) == {server.url("/down.jpg"): Reason.HTTP_ERROR}
    assert "503" in report.rejections[0].message
    assert server.hits["/down.jpg"] == FAST.retries + 1


def test_429_with_retry_after(server: LoopbackServer, store: ImageStore) -> None:
    server.add("/busy.jpg", Route(body=_jpeg(3), fail_times=1, fail_status=429, retry_after=0.02))
    report = download_all([server.url("/busy.jpg")], store, FAST)
    assert report.rejections == [] and server.hits["/busy.jpg"] == 2


def test_retry_after_parsing_is_capped() -> None:
    assert retry_after_seconds("120", cap=8.0) == 8.0
    assert retry_after_seconds("0.5", cap=8.0) == 0.5
    assert retry_after_seconds("-3", cap=8.0) == 0.0
    assert retry_after_seconds(None, cap=8.0) is None
    assert retry_after_seconds("soon", cap=8.0) is None
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert retry_after_seconds(later, cap=8.0) == 8.0


def test_slow_server_times_out(server: LoopbackServer, store: ImageStore) -> None:
    server.add("/slow.jpg", Route(body=_jpeg(4), delay=0.6))
    settings = dataclasses.replace(FAST, timeout_s=0.2, retries=1, backoff_s=0.01, backoff_max_s=0.01)
    report = download_all([server.url("/slow.jpg")], store, settings)
    assert _reasons(report) == {server.url("/slow.jpg"): Reason.TIMEOUT}
    assert server.hits["/slow.jpg"] == 2


def test_html_is_not_an_image(server: LoopbackServer, store: ImageStore) -> None:
    server.add("/page", Route(body=b"<html><body>moved</body></html>", content_type="text/html; charset=utf-8"))
    # A soft error page that claims to be a JPEG is caught by the magic bytes.
    server.add("/liar.jpg", Route(body=b"<!doctype html><html>" + b" " * 100, content_type="image/jpeg"))
    report = download_all([server.url("/page"), server.url("/liar.jpg")], store, FAST)
    assert set(_reasons(report).values()) == {Reason.NOT_AN_IMAGE}
    assert server.hits["/page"] == 1 and server.hits["/liar.jpg"] == 1
    assert _stored_files(store.root) == [] and list(store.partial_dir.iterdir()) == []


def test_truncated_transfer_is_connection_error(server: LoopbackServer, store: ImageStore) -> None:
    body = _jpeg(5)
    server.add("/cut.jpg", Route(body=body, declared_length=len(body) + 500))
    report = download_all([server.url("/cut.jpg")], store, FAST)
    assert _reasons(report) == {server.url("/cut.jpg"): Reason.CONNECTION_ERROR}
    assert server.hits["/cut.jpg"] == FAST.retries + 1
    assert _stored_files(store.root) == []


def test_refused_connection_is_connection_error(store: ImageStore) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.jpg"  # nothing listens here any more
    report = download_all([url], store, FAST)
    assert _reasons(report) == {url: Reason.CONNECTION_ERROR}


def test_too_large_from_content_length(server: LoopbackServer, store: ImageStore) -> None:
    server.add("/big.jpg", Route(body=_jpeg(6, size=64)))
    settings = dataclasses.replace(FAST, max_bytes=200)
    report = download_all([server.url("/big.jpg")], store, settings)
    assert _reasons(report) == {server.url("/big.jpg"): Reason.TOO_LARGE}


def test_too_large_while_streaming(store: ImageStore) -> None:
    chunks = iter([_jpeg(7)[:100]] * 5)  # no declared length: caught as the bytes arrive
    with pytest.raises(DownloadError) as info:
        store.add("http://x/huge.jpg", chunks, max_bytes=250)
    assert info.value.reason == Reason.TOO_LARGE
    assert list(store.partial_dir.iterdir()) == [] and store.lookup("http://x/huge.jpg") is None


def test_redirect_is_followed(server: LoopbackServer, store: ImageStore) -> None:
    body = _jpeg(8)
    server.add("/old.jpg", Route(redirect_to=server.url("/new.jpg")))
    server.add("/new.jpg", Route(body=body))
    report = download_all([server.url("/old.jpg")], store, FAST)
    assert report.results[server.url("/old.jpg")].path.read_bytes() == body
    assert server.hits["/old.jpg"] == 1 and server.hits["/new.jpg"] == 1


def test_gone_host_answered_through_proxy(server: LoopbackServer, store: ImageStore) -> None:
    url = "http://gone.invalid/x.jpg"
    body = _jpeg(9)
    server.add(url, Route(body=body))
    settings = DownloadSettings(proxies={"http": server.proxy_url}, retries=0)
    report = download_all([url], store, settings)
    assert report.results[url].path.read_bytes() == body
    assert server.hits[url] == 1


def test_resume_downloads_nothing(server: LoopbackServer, tmp_path: Path) -> None:
    for i in range(5):
        server.add(f"/resume/{i}.jpg", Route(body=_jpeg(i)))
    urls = [server.url(f"/resume/{i}.jpg") for i in range(5)]
    first = download_all(urls, ImageStore(tmp_path / "s"), FAST)
    hits = dict(server.hits)

    second = download_all(urls, ImageStore(tmp_path / "s"), FAST)  # as a new process would

    assert dict(server.hits) == hits
    assert second.cached == 5 and second.downloaded == 0
    for url in urls:
        assert second.results[url].from_cache
        assert second.results[url].sha256 == first.results[url].sha256


def test_corrupt_stored_file_is_downloaded_again(server: LoopbackServer, tmp_path: Path) -> None:
    body = _jpeg(10)
    server.add("/corrupt.jpg", Route(body=body))
    url = server.url("/corrupt.jpg")
    stored = download_all([url], ImageStore(tmp_path / "s"), FAST).results[url]
    stored.path.write_bytes(body[: len(body) // 2])  # a partial file from some other tool

    store = ImageStore(tmp_path / "s")
    assert store.lookup(url) is None
    again = download_all([url], store, FAST).results[url]
    assert not again.from_cache and again.path.read_bytes() == body
    assert server.hits["/corrupt.jpg"] == 2


def test_torn_manifest_line_is_ignored(server: LoopbackServer, tmp_path: Path) -> None:
    for name in ("a", "b"):
        server.add(f"/torn/{name}.jpg", Route(body=_jpeg(ord(name))))
    a, b = server.url("/torn/a.jpg"), server.url("/torn/b.jpg")
    download_all([a], ImageStore(tmp_path / "s"), FAST)
    manifest = tmp_path / "s" / MANIFEST_NAME
    with open(manifest, "ab") as f:
        f.write(b'{"url": "http://127.0.0.1/b.jpg", "sha2')  # killed mid-write

    store = ImageStore(tmp_path / "s")
    assert len(store) == 1 and store.lookup(a) is not None
    download_all([b], store, FAST)

    lines = manifest.read_bytes().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["url"] == b  # new entry on its own line
    reopened = ImageStore(tmp_path / "s")
    assert len(reopened) == 2 and reopened.lookup(b) is not None


def test_later_manifest_entries_win(store: ImageStore) -> None:
    first = store.add("u", iter([_jpeg(11)]), max_bytes=10**6)
    second = store.add("u", iter([_png(12)]), max_bytes=10**6)
    assert first.sha256 != second.sha256
    assert ImageStore(store.root).lookup("u") == dataclasses.replace(second, from_cache=True)


def test_body_shorter_than_declared_is_not_stored(store: ImageStore) -> None:
    body = _jpeg(14)
    with pytest.raises(DownloadError) as info:
        store.add("u", iter([body]), max_bytes=10**6, expected_size=len(body) + 1)
    assert info.value.reason == Reason.CONNECTION_ERROR and info.value.retryable
    assert _stored_files(store.root) == [] and store.lookup("u") is None


def test_local_paths_and_non_http_urls_are_refused_unread(tmp_path: Path, store: ImageStore) -> None:
    image = tmp_path / "in dir" / "face.png"
    image.parent.mkdir()
    image.write_bytes(_png(13))
    refused = [str(image), image.as_uri(), "ftp://host/x.jpg", "data:image/png;base64,iVBORw0KGgo="]
    invalid = ["http://[::1/x.jpg", "http:///x.jpg", ""]

    report = download_all([*refused, *invalid], store, FAST, source="user")

    assert report.results == {}
    assert _reasons(report) == {
        **dict.fromkeys(refused, Reason.UNSUPPORTED_SCHEME),
        **dict.fromkeys(invalid, Reason.UNREADABLE_FILE),
    }
    assert {r.source for r in report.rejections} == {"user"}
    assert _stored_files(store.root) == [] and len(store) == 0


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
     ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)  # fmt: skip
def test_sniff_image_types(fmt: str, mime: str) -> None:
    data = encode(face_image(16, 16, [], random.Random(0)), fmt)
    assert sniff_image_type(data[:32]) is not None and sniff_image_type(data[:32])[0] == mime  # type: ignore[index]


def test_sniff_rejects_text() -> None:
    assert sniff_image_type(b"BMW owners club newsletter, issue 42") is None
    assert sniff_image_type(b"<html>") is None


def test_unresolvable_host_fails_fast_for_its_other_urls(store: ImageStore) -> None:
    urls = ["http://gone.invalid/1.jpg", "http://gone.invalid/2.jpg"]
    settings = DownloadSettings(concurrency=1, retries=0)
    report = download_all(urls, store, settings)
    assert _reasons(report) == dict.fromkeys(urls, Reason.CONNECTION_ERROR)
    assert "earlier in this run" in report.rejections[1].message


def test_partials_of_dead_writers_on_this_host_are_removed_on_open(tmp_path: Path) -> None:
    """A kill mid-download leaves a ``.part``; the next open removes it, not a day later.

    Partials of live processes (another run sharing the store) and of other hosts (a
    shared disk) are kept: only their writer can tell whether they are still growing.
    """
    store = ImageStore(tmp_path / "raw")
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    host = _HOST_TAG
    dead = store.partial_dir / f"{host}-{dead_pid}-{'a' * 32}.part"
    alive = store.partial_dir / f"{host}-{os.getppid()}-{'b' * 32}.part"
    other_host = store.partial_dir / f"elsewhere-{dead_pid}-{'c' * 32}.part"
    for part in (dead, alive, other_host):
        part.write_bytes(b"\xff\xd8 half a jpeg")

    ImageStore(tmp_path / "raw")

    assert sorted(p.name for p in store.partial_dir.iterdir()) == sorted([alive.name, other_host.name])


def test_a_proxied_host_that_does_not_resolve_here_is_looked_up_once(server: LoopbackServer, store: ImageStore) -> None:
    """The demo's (and a corporate proxy's) case: 20 URLs of one host that only the proxy knows,
    fetched by 8 threads, ask the local resolver once, not once per URL (an offline resolver
    here took 5 s a lookup under load: the download crawled at 10 URLs/s)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from faces_core.download.fetch import _Fetcher
    from faces_core.download.watchdog import _Watchdog, make_session

    urls = [f"http://only-the-proxy-knows.invalid/{i}.jpg" for i in range(20)]
    for i, url in enumerate(urls):
        server.add(url, Route(body=_jpeg(100 + i)))
    settings = DownloadSettings(proxies={"http": server.proxy_url}, retries=0, concurrency=8)
    stop = threading.Event()
    watchdog = _Watchdog(stop)
    try:
        with make_session(settings) as session:
            fetcher = _Fetcher(store, settings, session, stop, watchdog)
            with ThreadPoolExecutor(8) as pool:
                stored = list(pool.map(fetcher.fetch, urls))
    finally:
        watchdog.close()
    assert [s.path.read_bytes() for s in stored] == [_jpeg(100 + i) for i in range(20)]
    assert fetcher.lookups["only-the-proxy-knows.invalid"] == 1
