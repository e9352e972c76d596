"""LoopbackServer and Route: origin and proxy mode, injected failures, hit counts, shutdown."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests

from faces_core.testing import LoopbackServer, Route

GONE = "http://gone-host.invalid"


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A session that ignores http_proxy/no_proxy of the environment."""
    with requests.Session() as s:
        s.trust_env = False
        yield s


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def _proxied(server: LoopbackServer) -> dict[str, str]:
    return {"http": server.proxy_url}


def test_origin_mode_serves_route_by_path(server: LoopbackServer, session: requests.Session) -> None:
    server.add("/img/a.jpg", Route(body=b"jpeg bytes", content_type="image/jpeg"))
    server.add("/b.png", Route(body=b"png bytes", content_type="image/png"))
    r = session.get(server.url("/img/a.jpg"), timeout=5)
    assert r.status_code == 200
    assert r.content == b"jpeg bytes"
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.headers["Content-Length"] == str(len(b"jpeg bytes"))
    r = session.get(server.url("b.png"), timeout=5)
    assert (r.status_code, r.content, r.headers["Content-Type"]) == (200, b"png bytes", "image/png")
    assert server.hits["/img/a.jpg"] == 1
    assert server.hits["/b.png"] == 1


def test_routes_given_to_constructor(session: requests.Session) -> None:
    with LoopbackServer({"/x": Route(body=b"x")}) as srv:
        assert session.get(srv.url("/x"), timeout=5).content == b"x"


def test_url_and_proxy_url_point_at_loopback(server: LoopbackServer) -> None:
    assert server.port > 0
    assert server.proxy_url == f"http://127.0.0.1:{server.port}"
    assert server.url("/a/b.jpg") == f"http://127.0.0.1:{server.port}/a/b.jpg"
    assert server.url("a/b.jpg") == server.url("/a/b.jpg")


def test_proxy_mode_answers_full_url_of_missing_host(server: LoopbackServer, session: requests.Session) -> None:
    url = f"{GONE}/dir/face.jpg"
    server.add(url, Route(body=b"proxied"))
    r = session.get(url, proxies=_proxied(server), timeout=5)
    assert r.status_code == 200
    assert r.content == b"proxied"
    assert server.hits[url] == 1


def test_proxy_mode_keeps_hosts_apart(server: LoopbackServer, session: requests.Session) -> None:
    server.add("http://one.invalid/x.jpg", Route(body=b"one"))
    server.add("http://two.invalid/x.jpg", Route(body=b"two"))
    assert session.get("http://one.invalid/x.jpg", proxies=_proxied(server), timeout=5).content == b"one"
    assert session.get("http://two.invalid/x.jpg", proxies=_proxied(server), timeout=5).content == b"two"
    assert server.hits["http://one.invalid/x.jpg"] == 1
    assert server.hits["http://two.invalid/x.jpg"] == 1


def test_proxy_mode_falls_back_to_path_route(server: LoopbackServer, session: requests.Session) -> None:
    server.add("/shared.jpg", Route(body=b"by path"))
    r = session.get(f"{GONE}/shared.jpg", proxies=_proxied(server), timeout=5)
    assert (r.status_code, r.content) == (200, b"by path")
    assert server.hits["/shared.jpg"] == 1


def test_proxy_mode_unknown_url_is_404(server: LoopbackServer, session: requests.Session) -> None:
    server.add(f"{GONE}/known.jpg", Route(body=b"k"))
    r = session.get(f"{GONE}/unknown.jpg", proxies=_proxied(server), timeout=5)
    assert r.status_code == 404


def test_fail_times_then_success_with_hit_counts(server: LoopbackServer, session: requests.Session) -> None:
    server.add("/flaky.jpg", Route(body=b"ok at last", fail_times=2, fail_status=503))
    statuses = [session.get(server.url("/flaky.jpg"), timeout=5).status_code for _ in range(2)]
    assert statuses == [503, 503]
    assert server.hits["/flaky.jpg"] == 2
    r = session.get(server.url("/flaky.jpg"), timeout=5)
    assert (r.status_code, r.content) == (200, b"ok at last")
    assert server.hits["/flaky.jpg"] == 3
    assert session.get(server.url("/flaky.jpg"), timeout=5).status_code == 200
    assert server.hits["/flaky.jpg"] == 4


def test_default_fail_status_is_500(server: LoopbackServer, session: requests.Session) -> None:
    server.add("/once.jpg", Route(body=b"b", fail_times=1))
    r = session.get(server.url("/once.jpg"), timeout=5)
    assert r.status_code == 500
    assert "Retry-After" not in r.headers
    assert session.get(server.url("/once.jpg"), timeout=5).status_code == 200


@pytest.mark.parametrize(("retry_after", "header"), [(3, "3"), (1.5, "1.5"), (0, "0")])
def test_retry_after_header_sent_with_failures(
    server: LoopbackServer, session: requests.Session, retry_after: float, header: str
) -> None:
    server.add("/throttled.jpg", Route(body=b"b", fail_times=1, fail_status=429, retry_after=retry_after))
    r = session.get(server.url("/throttled.jpg"), timeout=5)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == header
    r = session.get(server.url("/throttled.jpg"), timeout=5)
    assert r.status_code == 200
    assert "Retry-After" not in r.headers


def test_redirect_to_gives_302_with_location(server: LoopbackServer, session: requests.Session) -> None:
    server.add("/old.jpg", Route(redirect_to="/new.jpg"))
    server.add("/new.jpg", Route(body=b"moved"))
    r = session.get(server.url("/old.jpg"), timeout=5, allow_redirects=False)
    assert r.status_code == 302
    assert r.headers["Location"] == "/new.jpg"
    followed = session.get(server.url("/old.jpg"), timeout=5)
    assert (followed.status_code, followed.content) == (200, b"moved")
    assert [h.status_code for h in followed.history] == [302]
    assert server.hits["/old.jpg"] == 2
    assert server.hits["/new.jpg"] == 1


def test_permanent_error_status_and_content_type(server: LoopbackServer, session: requests.Session) -> None:
    server.add("/forbidden.jpg", Route(body=b"no", status=403))
    server.add("/page.jpg", Route(body=b"<html></html>", content_type="text/html"))
    assert session.get(server.url("/forbidden.jpg"), timeout=5).status_code == 403
    assert session.get(server.url("/forbidden.jpg"), timeout=5).status_code == 403
    r = session.get(server.url("/page.jpg"), timeout=5)
    assert (r.status_code, r.headers["Content-Type"]) == (200, "text/html")


def test_declared_length_larger_than_body_breaks_the_transfer(
    server: LoopbackServer, session: requests.Session
) -> None:
    server.add("/truncated.jpg", Route(body=b"\xff\xd8\xff" + b"x" * 100, declared_length=10_000))
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        session.get(server.url("/truncated.jpg"), timeout=5)
    head = session.get(server.url("/truncated.jpg"), timeout=5, stream=True)
    assert head.headers["Content-Length"] == "10000"
    head.close()


def test_unknown_path_is_404_and_counted(server: LoopbackServer, session: requests.Session) -> None:
    server.add("/known.jpg", Route(body=b"k"))
    r = session.get(server.url("/nope.jpg"), timeout=5)
    assert r.status_code == 404
    assert server.hits["/nope.jpg"] == 1
    assert server.hits["/known.jpg"] == 0


def _get_fresh(url: str) -> requests.Response:
    """GET on a new connection that is closed afterwards (no pooled keep-alive socket)."""
    with requests.Session() as s:
        s.trust_env = False
        return s.get(url, timeout=5, headers={"Connection": "close"})


def test_stop_frees_the_port() -> None:
    srv = LoopbackServer({"/x": Route(body=b"x")}).start()
    port = srv.port
    assert _get_fresh(srv.url("/x")).content == b"x"
    srv.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        _get_fresh(f"http://127.0.0.1:{port}/x")
    # Nothing listens any more: the port can be bound and listened on again.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1)


def test_context_manager_stops_on_exit() -> None:
    with LoopbackServer({"/x": Route(body=b"x")}) as srv:
        port = srv.port
        assert _get_fresh(srv.url("/x")).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        _get_fresh(f"http://127.0.0.1:{port}/x")


def test_stop_also_ends_kept_alive_connections(session: requests.Session) -> None:
    srv = LoopbackServer({"/x": Route(body=b"x")}).start()
    assert session.get(srv.url("/x"), timeout=5).status_code == 200  # the session pools this connection
    srv.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(srv.url("/x"), timeout=5)
