"""download_all stops promptly on its stop event, keeping what it stored (no Prefect involved)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from faces_core.download import DownloadCancelled, DownloadSettings, ImageStore, download_all
from faces_core.sample import encode, face_image
from faces_core.testing import LoopbackServer, Route

# Deadlines far beyond the test: only the stop can end the dripping downloads.
SETTINGS = DownloadSettings(
    concurrency=8, timeout_s=30.0, attempt_timeout_s=300.0, url_timeout_s=600.0, allow_private_hosts=True
)


def _jpeg(seed: int) -> bytes:
    return encode(face_image(48, 48, [(4, 4, 44, 44)], random.Random(seed)))


def test_stop_event_cuts_in_flight_downloads_and_keeps_stored_ones(tmp_path: Path) -> None:
    with LoopbackServer() as server:
        fast = {server.url(f"/fast/{i}.jpg"): _jpeg(i) for i in range(3)}
        drip = {server.url(f"/drip/{i}.jpg"): _jpeg(10 + i) for i in range(4)}
        for url, body in fast.items():
            server.add(url.split(str(server.port))[1], Route(body))
        for url, body in drip.items():
            server.add(url.split(str(server.port))[1], Route(body, chunk_size=1, chunk_delay=0.5))
        store = ImageStore(tmp_path / "s")
        stop = threading.Event()
        done: list[int] = []
        # Stop once the three fast images are stored (the drips are then in flight).
        timer = threading.Thread(target=lambda: (_wait_for(lambda: len(done) >= 3), stop.set()), daemon=True)
        timer.start()
        start = time.monotonic()
        with pytest.raises(DownloadCancelled):
            download_all([*fast, *drip], store, SETTINGS, progress=lambda d, t: done.append(d), stop=stop)
        took = time.monotonic() - start
        timer.join()

    assert took < 3.0
    reopened = ImageStore(store.root)  # as the next run sees it
    for url, body in fast.items():
        stored = reopened.lookup(url)
        assert stored is not None and stored.path.read_bytes() == body
    assert all(reopened.lookup(url) is None for url in drip)
    assert len(reopened) == 3 and list(store.partial_dir.iterdir()) == []


def test_stop_set_before_the_start_requests_nothing(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with LoopbackServer() as server:
        server.add("/a.jpg", Route(_jpeg(1)))
        with pytest.raises(DownloadCancelled):
            download_all([server.url("/a.jpg")], ImageStore(tmp_path / "s"), SETTINGS, stop=stop)
        assert server.hits["/a.jpg"] == 0


def _wait_for(condition: Callable[[], bool], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
