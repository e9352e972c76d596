"""Download benchmark: ours against a serial ``requests.get`` loop and the latency limit.

A loopback server in its own process (so its threads do not share our GIL) answers 1,000
distinct JPEGs, each after a fixed per-request latency standing in for the network
(``Route.delay``). Measured in the same run:

* **baseline**: the old script's loop, one ``requests.get`` after another, each body
  written to a file. At 100 ms a request it needs 100 s for 1,000 URLs, so it is timed on
  the first ``serial_sample`` URLs and its rate (images/s) is what is compared; the table
  says so.
* **ours**: :func:`faces_core.ingest.download.download_all` into a fresh
  :class:`~faces_core.ingest.download.ImageStore` at each concurrency of the sweep, every
  stored file checked against the body the server sent (a wrong or missing one is lost).
* **limit**: with ``c`` requests in flight and latency ``L``, ``n`` URLs need at least
  ``n * L / c`` seconds: the rate cannot exceed ``c / L``.

The default to recommend is the smallest concurrency within 10 % of the fastest: more
connections than that load the image hosts for nothing. URLs are ``http://127.0.0.1``
with ``allow_private_hosts`` (both sides skip name resolution alike).
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import random
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import requests

from bench.common import BenchResult, Figure, ratio, timed
from faces_core.ingest.download import DownloadSettings, ImageStore, download_all
from faces_core.sample import encode, face_image
from faces_core.testing import LoopbackServer, Route
from flows import keep_loopback_off_proxy

NAME = "download"
TARGET_RATIO = 25.0
NEAR_BEST = 0.9
"""A concurrency within this share of the fastest rate is good enough to be the default."""


@dataclass(frozen=True, slots=True)
class DownloadBench:
    """Sizes of the download benchmark (``tiny`` for the smoke test)."""

    images: int = 1000
    latency_s: float = 0.1
    concurrencies: tuple[int, ...] = (8, 32, 64, 128)
    serial_sample: int = 100

    @classmethod
    def tiny(cls) -> DownloadBench:
        return cls(images=40, latency_s=0.02, concurrencies=(4, 16), serial_sample=10)


def make_bodies(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct small JPEGs (drawn faces, 48 to 96 px)."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        w, h = rng.randint(48, 96), rng.randint(48, 96)
        bodies.append(encode(face_image(w, h, [(1, 1, w - 2, h - 2)], rng)))
    return bodies


def _serve(routes: dict[str, Route], conn: Connection) -> None:
    """Server process: answer ``routes`` until the parent says stop (or goes away)."""
    with LoopbackServer(routes) as server:
        conn.send(server.port)
        with contextlib.suppress(EOFError):
            conn.recv()


class ServerProcess:
    """A :class:`LoopbackServer` in a child process; ``port`` once started."""

    def __init__(self, routes: dict[str, Route]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(routes, child), daemon=True)
        self.port = 0

    def __enter__(self) -> ServerProcess:
        self._process.start()
        if not self._conn.poll(60):
            self._process.kill()
            raise RuntimeError("the loopback server process did not start within 60 s")
        self.port = int(self._conn.recv())
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def serial_loop(urls: list[str], out: Path) -> int:
    """The old script: one ``requests.get`` after another, each body written to a file.

    Returns:
        How many URLs answered 200.
    """
    out.mkdir(parents=True, exist_ok=True)
    ok = 0
    for i, url in enumerate(urls):
        resp = requests.get(url, timeout=30)
        if resp.status_code == 200:
            (out / f"{i}.jpg").write_bytes(resp.content)
            ok += 1
    return ok


def _lost(report_results: dict[str, Any], expected: dict[str, str]) -> int:
    """URLs without a stored file whose bytes hash to what the server sent."""
    lost = 0
    for url, sha in expected.items():
        stored = report_results.get(url)
        if stored is None or stored.sha256 != sha or hashlib.sha256(stored.path.read_bytes()).hexdigest() != sha:
            lost += 1
    return lost


def run(work: Path | None = None, size: DownloadBench | None = None) -> BenchResult:
    """Run the download benchmark and return its figures.

    Args:
        work: Scratch folder (a temporary one when None); the stores are written there.
        size: Sizes (the full benchmark when None).
    """
    size = size or DownloadBench()
    work = work or Path(tempfile.mkdtemp(prefix="faces-bench-download-"))
    keep_loopback_off_proxy()  # both sides talk to 127.0.0.1 directly, whatever http_proxy says
    bodies = make_bodies(size.images)
    paths = [f"/img/{i:05d}.jpg" for i in range(size.images)]
    routes = {p: Route(body=b, delay=size.latency_s) for p, b in zip(paths, bodies, strict=True)}
    result = BenchResult(NAME, f"Download: {size.images:,} images, {size.latency_s * 1000:.0f} ms latency each")
    with ServerProcess(routes) as server:
        urls = [f"http://127.0.0.1:{server.port}{p}" for p in paths]
        expected = {u: hashlib.sha256(b).hexdigest() for u, b in zip(urls, bodies, strict=True)}
        sample = urls[: size.serial_sample]
        serial_s, serial_ok = timed(serial_loop, sample, work / "serial")
        serial_rate = len(sample) / serial_s
        sweep: dict[int, dict[str, Any]] = {}
        for concurrency in size.concurrencies:
            settings = DownloadSettings(concurrency=concurrency, allow_private_hosts=True)
            store = ImageStore(work / f"ours-c{concurrency}")
            seconds, report = timed(download_all, urls, store, settings)
            again_s, again = timed(download_all, urls, ImageStore(store.root), settings)
            sweep[concurrency] = {
                "seconds": seconds,
                "rate": size.images / seconds,
                "limit_rate": concurrency / size.latency_s,
                "stored": len(report.results),
                "rejected": len(report.rejections),
                "lost": _lost(report.results, expected),
                "rerun_seconds": again_s,
                "rerun_fetched": again.downloaded,
            }
    best_rate = max(s["rate"] for s in sweep.values())
    default = min(c for c, s in sweep.items() if s["rate"] >= NEAR_BEST * best_rate)
    serial_note = (
        f"serial timed on the first {len(sample)} URLs ({serial_s:.1f} s); "
        f"all {size.images:,} would take ~{size.images / serial_rate:.0f} s"
    )
    for concurrency, s in sweep.items():
        chosen = concurrency == default
        speedup = ratio(s["rate"], serial_rate)
        lost_note = f"{s['lost']} lost of {size.images:,}; re-run fetched {s['rerun_fetched']}"
        result.figures.append(
            Figure(
                measure=f"concurrency {concurrency}" + (" (best default)" if chosen else ""),
                ours=s["rate"],
                unit="images/s",
                baseline=serial_rate,
                baseline_name="serial requests.get loop",
                ratio=speedup,
                limit=s["limit_rate"],
                target=f">= {TARGET_RATIO:g}x, 0 lost" if chosen else "",
                met=(speedup >= TARGET_RATIO and s["lost"] == 0 and s["rerun_fetched"] == 0) if chosen else None,
                note=lost_note + ("; " + serial_note if chosen else ""),
            )
        )
    result.details = {
        "images": size.images,
        "latency_s": size.latency_s,
        "serial": {"urls": len(sample), "seconds": serial_s, "ok": serial_ok, "rate": serial_rate},
        "sweep": {str(c): s for c, s in sweep.items()},
        "best_default_concurrency": default,
    }
    result.notes.append(
        f"Best default concurrency: {default} (smallest within {NEAR_BEST:.0%} of the fastest; "
        "params.yaml download.concurrency is what the pipeline uses). " + serial_note + "."
    )
    return result
