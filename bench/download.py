"""Download benchmark: ours against the tools a user would pick, at the same concurrency, and the latency limit.

A loopback server in its own process (so its threads do not share anyone's GIL) answers
distinct JPEGs, each after a per-request latency standing in for the network
(``Route.delay``). Every contender runs as its own child process on the same URL list, at the
same concurrency (params.yaml ``download.concurrency``), interleaved in rounds
(:func:`bench.common.interleave`) until the ratios are stable:

* **ours**: :func:`faces_core.download.pool.download_all` with params.yaml's download
  settings (retries, deadlines, host checks, magic-byte sniffing, content-addressed store with
  its crash-safe manifest), then the same call again on the same store (must fetch nothing);
* **pool**: ``ThreadPoolExecutor`` with one shared ``requests.Session`` (its connection pool
  sized to the concurrency), each body written to a file: what a competent script does;
* **img2dataset** (the usual tool for URL lists; ``--resize_mode no
  --disable_all_reencoding True``, so it keeps the original bytes, ``--processes_count 1
  --thread_count <concurrency>``), run from its own virtual environment (its pins clash with
  ours: ``pandas<3``; see :data:`IMG2DATASET`).

Rates compare the download itself: each child times its own download (img2dataset: the
``duration`` of its shard's stats file); the whole command's wall time (start-up included) is
in the details. CPU seconds are the child process's (and its children's) user + system time,
start-up included. Every stored file is checked against the body the server sent (a wrong or
missing one is lost).

Limit: with ``c`` requests in flight, ``n`` URLs whose latencies add up to ``S`` need at least
``max(S / c, longest latency)`` seconds. Two sets: ``images`` URLs at a fixed latency, and
``mixed_urls`` URLs with latencies uniform in ``mixed_latency_s`` of which ``mixed_failures``
answer 404 (dead links, which nobody retries), where the tail (the time to the last URL) is
reported beside the median.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.common import REPO, BenchResult, Figure, Rounds, Sample, impossible_rate, interleave, run_child
from faces_core.sample import encode, face_image
from faces_core.testing import LoopbackServer, Route

NAME = "download"
TARGET_SHARE = 0.8
"""Ours must reach this share of the latency limit."""
TARGET_VS_IMG2DATASET = 1.0
IMG2DATASET_VERSION = "1.47.0"
IMG2DATASET = Path(os.environ.get("FACES_IMG2DATASET_VENV", "/tmp/img2dataset-venv"))
"""img2dataset's own virtual environment (created on first use: pip from the package index)."""


@dataclass(frozen=True, slots=True)
class DownloadBench:
    """Sizes of the download benchmark (``tiny`` for the smoke test)."""

    images: int = 1000
    latency_s: float = 0.1
    concurrency: int = 0
    """0: params.yaml ``download.concurrency``."""
    min_rounds: int = 3
    max_rounds: int = 5
    mixed_urls: int = 10_000
    mixed_latency_s: tuple[float, float] = (0.01, 0.5)
    mixed_failures: float = 0.05
    mixed_rounds: int = 2
    img2dataset: bool = True
    profile_urls: int = 300

    @classmethod
    def tiny(cls) -> DownloadBench:
        return cls(
            images=40,
            latency_s=0.02,
            concurrency=8,
            min_rounds=1,
            max_rounds=1,
            mixed_urls=60,
            mixed_latency_s=(0.005, 0.05),
            mixed_rounds=1,
            img2dataset=False,
            profile_urls=20,
        )


def make_bodies(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct small JPEGs (drawn faces, 48 to 96 px)."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        w, h = rng.randint(48, 96), rng.randint(48, 96)
        bodies.append(encode(face_image(w, h, [(1, 1, w - 2, h - 2)], rng)))
    return bodies


def _serve(routes: dict[str, Route], conn: Connection) -> None:
    """Server process: answer ``routes`` until the parent says stop (or goes away).

    The handler sets ``TCP_NODELAY``, as nginx and every CDN do (``tcp_nodelay on``): without it
    the body, written after the headers, waits for the client's delayed ACK (about 40 ms on
    Linux loopback) on a kept-alive connection, which taxes every client that reuses
    connections (ours, the pool) and not one that closes them (img2dataset's urllib).
    """
    from faces_core import testing

    testing._Handler.disable_nagle_algorithm = True
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


@dataclass(frozen=True, slots=True)
class UrlSet:
    """URLs with what the server answers: each URL's body hash (None: it fails) and latency."""

    urls: list[str]
    expected: list[str | None]
    latencies: list[float]

    def limit_seconds(self, concurrency: int) -> float:
        """Least seconds ``concurrency`` requests in flight need for every URL."""
        return max(sum(self.latencies) / concurrency, max(self.latencies))

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "urls.txt").write_text("".join(u + "\n" for u in self.urls))
        path = folder / "set.json"
        path.write_text(json.dumps({"urls": self.urls, "expected": self.expected}))
        return path


def build_routes(
    count: int, latency: tuple[float, float], failures: float, seed: int, prefix: str
) -> tuple[dict[str, Route], list[str | None], list[float], list[str]]:
    """Routes for ``count`` URLs: distinct JPEG bodies, latencies uniform in ``latency``, a
    share ``failures`` answering 404."""
    rng = random.Random(seed)
    bodies = make_bodies(count, seed)
    routes: dict[str, Route] = {}
    expected: list[str | None] = []
    latencies: list[float] = []
    paths: list[str] = []
    for i, body in enumerate(bodies):
        path = f"/{prefix}/{i:06d}.jpg"
        delay = latency[0] if latency[0] == latency[1] else rng.uniform(*latency)
        fails = rng.random() < failures
        routes[path] = Route(body=b"gone" if fails else body, status=404 if fails else 200, delay=delay)
        expected.append(None if fails else hashlib.sha256(body).hexdigest())
        latencies.append(delay)
        paths.append(path)
    return routes, expected, latencies, paths


# --- The children --------------------------------------------------------------------------


def _quantiles(finish: list[float]) -> dict[str, float]:
    if not finish:
        return {}
    ordered = sorted(finish)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"t50": pick(0.5), "t90": pick(0.9), "t99": pick(0.99), "t100": ordered[-1]}


def child_ours(urls: list[str], expected: list[str | None], out: Path, concurrency: int) -> dict[str, Any]:
    """Our downloader with params.yaml's settings, then a re-run on the same store."""
    from faces_core.download.pool import download_all
    from faces_core.download.store import ImageStore
    from flows.params import ingest_settings

    settings = replace(ingest_settings().download, concurrency=concurrency, allow_private_hosts=True)
    finish: list[float] = []
    start = time.perf_counter()
    cpu0 = time.process_time()
    report = download_all(urls, ImageStore(out), settings, progress=lambda d, t: finish.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    lost = 0
    for url, sha in zip(urls, expected, strict=True):
        stored = report.results.get(url)
        if sha is None:
            lost += stored is not None  # a 404 stored as an image would be wrong
        elif stored is None or hashlib.sha256(stored.path.read_bytes()).hexdigest() != sha:
            lost += 1
    again = download_all(urls, ImageStore(out), settings)
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "ok": len(report.results),
        "failed": len(report.rejections),
        "lost": lost,
        "refetched": again.downloaded,
        **_quantiles([t - start for t in finish]),
    }


def child_pool(urls: list[str], expected: list[str | None], out: Path, concurrency: int) -> dict[str, Any]:
    """``ThreadPoolExecutor`` + one shared ``requests.Session``, each 200 body written to a file."""
    import requests
    from requests.adapters import HTTPAdapter

    out.mkdir(parents=True, exist_ok=True)
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=concurrency, pool_maxsize=concurrency)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    def fetch(i: int) -> bool:
        try:
            resp = session.get(urls[i], timeout=10)
        except requests.RequestException:
            return False
        if resp.status_code != 200:
            return False
        (out / f"{i:06d}.jpg").write_bytes(resp.content)
        return True

    finish: list[float] = []
    ok = 0
    start = time.perf_counter()
    cpu0 = time.process_time()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in as_completed([pool.submit(fetch, i) for i in range(len(urls))]):
            ok += future.result()
            finish.append(time.perf_counter() - start)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    lost = 0
    for i, sha in enumerate(expected):
        path = out / f"{i:06d}.jpg"
        if sha is None:
            lost += path.exists()
        elif not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            lost += 1
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "ok": ok,
        "failed": len(urls) - ok,
        "lost": lost,
        **_quantiles(finish),
    }


def child_profile(urls: list[str], out: Path) -> dict[str, Any]:
    """Where ours spends its time per URL: every URL fetched in this thread under cProfile
    (zero-latency URLs, so only the work per URL is left), grouped by what it is."""
    import cProfile
    import pstats
    import threading

    from faces_core.download.fetch import _Fetcher
    from faces_core.download.store import ImageStore
    from faces_core.download.watchdog import _Watchdog, make_session
    from flows.params import ingest_settings

    settings = replace(ingest_settings().download, concurrency=1, allow_private_hosts=True)
    stop = threading.Event()
    watchdog = _Watchdog(stop)
    profile = cProfile.Profile()
    start = time.perf_counter()
    with make_session(settings) as session:
        fetcher = _Fetcher(ImageStore(out), settings, session, stop, watchdog)
        profile.enable()
        for url in urls:
            fetcher.fetch(url)
        profile.disable()
    seconds = time.perf_counter() - start
    watchdog.close()
    stats: dict[Any, Any] = getattr(pstats.Stats(profile), "stats")  # noqa: B009 (untyped attribute)
    groups = {  # name: (functions, whether their callees count)
        "fsync (file, folder, manifest)": (("fsync",), False),
        "proxy look-up in the environment (requests trust_env)": (("getproxies_environment",), True),
        "socket send and receive": (("recv_into", "sendall"), False),
    }
    found = {name: 0.0 for name in groups}
    for (_file, _line, func), (_cc, _nc, tottime, cumtime, _callers) in stats.items():
        for name, (funcs, cumulative) in groups.items():
            if any(f in func for f in funcs):
                found[name] += cumtime if cumulative else tottime
    total = sum(v[2] for v in stats.values())
    ms = {name: 1000 * v / len(urls) for name, v in found.items()}
    return {"urls": len(urls), "seconds": seconds, "ms_per_url": 1000 * total / len(urls), "ms": ms}


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.download")
    parser.add_argument("mode", choices=("ours", "pool", "profile"))
    parser.add_argument("set", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("concurrency", type=int)
    args = parser.parse_args(argv)
    data = json.loads(args.set.read_text())
    if args.mode == "profile":
        print(json.dumps(child_profile(data["urls"], args.out)))
        return 0
    fn = child_ours if args.mode == "ours" else child_pool
    print(json.dumps(fn(data["urls"], data["expected"], args.out, args.concurrency)))
    return 0


# --- img2dataset ----------------------------------------------------------------------------


def img2dataset_bin() -> Path | None:
    """img2dataset's command in its own venv, installed there on first use (None: cannot be)."""
    command = IMG2DATASET / "bin" / "img2dataset"
    if command.exists():
        return command
    import subprocess

    try:
        subprocess.run([sys.executable, "-m", "venv", str(IMG2DATASET)], check=True, capture_output=True)
        subprocess.run(
            [str(IMG2DATASET / "bin" / "pip"), "install", "-q", f"img2dataset=={IMG2DATASET_VERSION}"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return command if command.exists() else None


def _clean_env() -> dict[str, str]:
    """The environment without proxies (everything is on 127.0.0.1) and without update checks."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({"no_proxy": "127.0.0.1,localhost", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"})
    return env


def run_img2dataset(command: Path, urls_txt: Path, expected: list[str | None], out: Path, concurrency: int) -> Sample:
    """img2dataset on the URL list, original bytes kept; its shard's download duration counts."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [
        str(command),
        f"--url_list={urls_txt}",
        "--input_format=txt",
        "--output_format=files",
        f"--output_folder={out}",
        "--processes_count=1",
        f"--thread_count={concurrency}",
        "--resize_mode=no",
        "--disable_all_reencoding=True",
        f"--number_sample_per_shard={len(expected) + 1}",
        "--distributor=multiprocessing",
        "--timeout=10",
        "--retries=0",
        "--enable_wandb=False",
        "--compute_hash=None",
    ]
    _, sample = run_child(argv, env=_clean_env())
    stats = json.loads(next(out.glob("*_stats.json")).read_text())
    got = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*/*.jpg")}
    lost = sum(1 for sha in expected if sha is not None and sha not in got)
    lost += max(0, stats["successes"] - sum(1 for sha in expected if sha is not None))
    sample.extra = {
        "process_wall_s": sample.wall_s,
        "seconds": stats["duration"],
        "ok": stats["successes"],
        "failed": stats["failed_to_download"] + stats.get("failed_to_resize", 0),
        "lost": lost,
    }
    sample.wall_s = float(stats["duration"])
    sample.items = len(expected)
    return sample


def _contender(mode: str, set_json: Path, out: Path, concurrency: int, items: int) -> Callable[[], Sample]:
    def go() -> Sample:
        shutil.rmtree(out, ignore_errors=True)
        stdout, sample = run_child(
            [sys.executable, "-m", "bench.download", mode, str(set_json), str(out), str(concurrency)]
        )
        report = json.loads(stdout.strip().splitlines()[-1])
        report["process_wall_s"] = sample.wall_s
        report["process_cpu_s"] = sample.cpu_s
        sample.wall_s = report["seconds"]
        sample.items = items
        sample.extra = report
        return sample

    return go


def measure_set(
    urlset: UrlSet, work: Path, concurrency: int, min_rounds: int, max_rounds: int, img2dataset: Path | None
) -> Rounds:
    """Interleaved rounds of ours, the pool and img2dataset on one URL set."""
    set_json = urlset.write(work)
    n = len(urlset.urls)
    contenders = {
        "ours": _contender("ours", set_json, work / "ours", concurrency, n),
        "pool": _contender("pool", set_json, work / "pool", concurrency, n),
    }
    if img2dataset is not None:
        contenders["img2dataset"] = lambda: run_img2dataset(
            img2dataset, work / "urls.txt", urlset.expected, work / "img2dataset", concurrency
        )
    return interleave(contenders, "ours", min_rounds=min_rounds, max_rounds=max_rounds)


BASELINE_NAMES = {
    "pool": "ThreadPoolExecutor + shared requests.Session",
    "img2dataset": f"img2dataset {IMG2DATASET_VERSION}, resize_mode no",
}


def _figures(label: str, rounds: Rounds, limit_rate: float, concurrency: int) -> list[Figure]:
    """Ours against each baseline, share of the limit, tail, CPU and memory of one URL set."""
    figures: list[Figure] = []
    ours_rate = rounds.median_rate("ours")
    mid = rounds.median_sample("ours").extra
    lost = max(s.extra["lost"] for s in rounds.samples["ours"])
    refetched = max(s.extra["refetched"] for s in rounds.samples["ours"])
    failed = impossible_rate(max(s.rate for s in rounds.samples["ours"]), limit_rate)
    share = ours_rate / limit_rate
    figures.append(
        Figure(
            measure=f"{label}: ours, share of the latency limit",
            ours=ours_rate,
            unit="images/s",
            limit=limit_rate,
            target=f">= {TARGET_SHARE:.0%} of the limit, 0 lost, 0 re-fetched",
            met=share >= TARGET_SHARE and lost == 0 and refetched == 0,
            failed=failed,
            note=(
                f"median of {len(rounds.loads)} rounds; {lost} lost, re-run fetched {refetched}; "
                f"{mid['ok']:,} stored, {mid['failed']:,} failed; finished 50 % at {mid['t50']:.2f} s, "
                f"99 % at {mid['t99']:.2f} s, all at {mid['t100']:.2f} s"
            ),
        )
    )
    for base in (b for b in rounds.samples if b != "ours"):
        rate = rounds.median_rate(base)
        bmid = rounds.median_sample(base).extra
        tail = f"; 99 % at {bmid['t99']:.2f} s, all at {bmid['t100']:.2f} s" if "t99" in bmid else ""
        is_i2d = base == "img2dataset"
        figures.append(
            Figure(
                measure=f"{label}: ours vs {base} (concurrency {concurrency})",
                ours=ours_rate,
                unit="images/s",
                baseline=rate,
                baseline_name=BASELINE_NAMES[base],
                ratio=rounds.median_ratio(base),
                limit=limit_rate,
                target=f">= {TARGET_VS_IMG2DATASET:g}x" if is_i2d else "",
                met=rounds.median_ratio(base) >= TARGET_VS_IMG2DATASET if is_i2d else None,
                failed=impossible_rate(max(s.rate for s in rounds.samples[base]), limit_rate) if is_i2d else "",
                note=(
                    f"median ratio, spread {rounds.spread(base):.0%}; {base}: "
                    f"{max(s.extra['lost'] for s in rounds.samples[base])} lost, {bmid['ok']:,} stored{tail}; "
                    f"whole command {bmid['process_wall_s']:.1f} s"
                ),
            )
        )
    for name in rounds.samples:
        figures.append(
            Figure(
                measure=f"{label}: {name}, CPU seconds per 1,000 URLs / peak RSS",
                ours=rounds.median_cpu_per_1000(name),
                unit="CPU s",
                note=f"peak RSS {rounds.peak_rss(name):.0f} MiB; whole child process, start-up included",
            )
        )
    return figures


def run(work: Path | None = None, size: DownloadBench | None = None) -> BenchResult:
    """Run the download benchmark and return its figures.

    Args:
        work: Scratch folder (a temporary one when None).
        size: Sizes (the full benchmark when None).
    """
    from flows.params import ingest_settings

    size = size or DownloadBench()
    work = work or Path(tempfile.mkdtemp(prefix="faces-bench-download-"))
    concurrency = size.concurrency or ingest_settings().download.concurrency
    fixed = build_routes(size.images, (size.latency_s, size.latency_s), 0.0, 0, "fixed")
    mixed = build_routes(size.mixed_urls, size.mixed_latency_s, size.mixed_failures, 1, "mixed")
    instant = build_routes(size.profile_urls, (0.0, 0.0), 0.0, 2, "instant")
    command = img2dataset_bin() if size.img2dataset else None
    result = BenchResult(
        NAME,
        f"Download: {size.images:,} URLs at {size.latency_s * 1000:.0f} ms and {size.mixed_urls:,} URLs at "
        f"{size.mixed_latency_s[0] * 1000:.0f}-{size.mixed_latency_s[1] * 1000:.0f} ms with "
        f"{size.mixed_failures:.0%} dead links, concurrency {concurrency}",
    )
    with ServerProcess({**fixed[0], **mixed[0], **instant[0]}) as server:
        sets = {}
        for key, (_, expected, latencies, paths) in (("fixed", fixed), ("mixed", mixed), ("instant", instant)):
            sets[key] = UrlSet([f"http://127.0.0.1:{server.port}{p}" for p in paths], expected, latencies)
        fixed_rounds = measure_set(
            sets["fixed"], work / "fixed", concurrency, size.min_rounds, size.max_rounds, command
        )
        mixed_rounds = measure_set(
            sets["mixed"], work / "mixed", concurrency, size.mixed_rounds, size.mixed_rounds, command
        )
        stdout, _ = run_child(
            [
                sys.executable,
                "-m",
                "bench.download",
                "profile",
                str(sets["instant"].write(work / "instant")),
                str(work / "instant" / "store"),
                "1",
            ]
        )
        profile = json.loads(stdout.strip().splitlines()[-1])
    for label, key, rounds in (
        (f"{size.images:,} URLs", "fixed", fixed_rounds),
        (f"{size.mixed_urls:,} mixed", "mixed", mixed_rounds),
    ):
        limit_rate = len(sets[key].urls) / sets[key].limit_seconds(concurrency)
        result.figures += _figures(label, rounds, limit_rate, concurrency)
        result.notes.append(f"{label}: {rounds.describe()}.")
    if command is None and size.img2dataset:
        result.notes.append(f"img2dataset could not be installed into {IMG2DATASET}: its comparison is missing.")
    result.notes.append(
        "Limit: n URLs whose latencies add up to S need at least max(S / c, longest latency) seconds with c "
        "requests in flight. Ours does more per URL than either baseline: host and scheme checks, magic-byte "
        "sniffing, a streamed SHA-256, a file renamed into place and a manifest line per image (so a kill "
        "loses nothing), fsynced in batches (so a power cut costs at most the last batch, re-verified by hash), "
        "and retries for 5xx/timeouts (404s are final for everyone)."
    )
    parts = ", ".join(f"{name} {v:.2f} ms" for name, v in profile["ms"].items())
    result.notes.append(
        f"Where ours spends its time: fetching {profile['urls']} zero-latency URLs one after another under "
        f"cProfile costs {profile['ms_per_url']:.2f} ms of work per URL in this process (the server's share is "
        f"not in it), of which {parts}. At {concurrency} in flight on 2 cores shared with the server, that "
        "CPU time, not the latency, is what keeps ours under the limit."
    )
    result.details = {
        "profile": profile,
        "concurrency": concurrency,
        "fixed": {"limit_s": sets["fixed"].limit_seconds(concurrency), **fixed_rounds.to_json()},
        "mixed": {"limit_s": sets["mixed"].limit_seconds(concurrency), **mixed_rounds.to_json()},
        "img2dataset": str(command) if command else None,
    }
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(_child_main(sys.argv[1:]))
