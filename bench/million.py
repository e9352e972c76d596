"""Million-URL simulation, no network: how time and memory grow from 10k to 1M TCS lines.

Three measurements, each in a fresh child process whose tree's resident memory is sampled from
here (:func:`bench.common.run_child`):

* **parse + validate + plan** at every size (default 10k, 100k, 1M lines, one face each): the
  real :func:`faces_core.ingest.sources.tcs.read_tcs` (streamed, every line validated),
  a download report as :func:`~faces_core.download.pool.download_all` returns it (every URL
  stored, each with its own content hash, the files themselves not written), then the flow's
  :class:`~faces_core.ingest.pipeline.Collected` (``add_downloaded`` + ``plan``: faces grouped
  by image, duplicates rejected) and :func:`~faces_core.ingest.partition.shard`. The child also
  reports its resident memory after each phase, which is where the bytes are.
* **download scheduler** at the sizes up to ``download_max`` (loopback at ~500 URLs/s on 2
  shared cores makes 1M a 40-minute run): the real ``download_all`` against a loopback server
  that answers every path at once with the same small PNG (so the store keeps one file and
  the manifest a line per URL).
* **the Prefect flow** (``flows.ingest.ingest``, its own PREFECT_HOME) at two small sizes, to
  count the task runs of a run: they must grow with the shards (``ingest.shard_size`` images
  each), never with the items.

Reported: seconds and peak RSS per size, and the exponents of a fit ``value ~ size**b`` over the
sizes (time: target under 1.1; peak memory: under 1.5 GB at 1M).

    python -m bench.million                 # 10k, 100k, 1M (several minutes); writes bench/recorded/million.json
    python -m bench.million --sizes 1000,10000 --download-max 10000 --flow-sizes 200,600 --out /tmp/m.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    REPO,
    BenchResult,
    Figure,
    impossible_exponent,
    run_child,
    write_json,
)
from bench.scaling import fit_exponent

NAME = "million"
HOST = "million.invalid"
TARGET_MEMORY_MB = 1500.0
TARGET_TIME_EXPONENT = 1.1
RECORDED = BENCH_DIR / "recorded" / "million.json"
MIB = 2**20
SIDE = 160
"""Every image is SIDE x SIDE with its face box from 0.2 to 0.8 of each side (96 px: kept)."""


def tiny_png() -> bytes:
    """The one image the instant server answers: a flat SIDE x SIDE PNG (a few hundred bytes)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (180, 140, 120)).save(buf, "PNG")
    return buf.getvalue()


@dataclass(frozen=True, slots=True)
class MillionBench:
    """Sizes of the simulation."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    download_max: int = 100_000
    flow_sizes: tuple[int, ...] = (1_000, 3_000)

    @classmethod
    def tiny(cls) -> MillionBench:
        return cls(sizes=(200, 800), download_max=800, flow_sizes=(30, 90))


def write_tcs(path: Path, lines: int) -> Path:
    """``lines`` TCS JSON lines, one labelled face on its own SIDE x SIDE PNG each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    template = (
        '{{"content": "http://{host}/i/{k:07d}.png", "annotation": [{{"label": ["G_Male", "Age_20_30"], '
        '"notes": "", "points": [{{"x": 0.2, "y": 0.2}}, {{"x": 0.8, "y": 0.8}}], "imageWidth": {side}, '
        '"imageHeight": {side}}}], "extras": null, "metadata": {{"sec_taken": 7, "last_updated_by": "bench"}}}}\n'
    )
    with path.open("w") as f:
        for start in range(0, lines, 10_000):
            f.write(
                "".join(template.format(host=HOST, k=k, side=SIDE) for k in range(start, min(lines, start + 10_000)))
            )
    return path


# --- The instant server ---------------------------------------------------------------------


class _Instant(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    body = b""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body) + len(self.path.encode())))
        self.end_headers()
        self.wfile.write(self.body + self.path.encode())  # bytes after IEND: every URL its own content


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    """The listen backlog (socketserver's default is 5: a burst of new connections from 64
    threads overflowed it, and the dropped SYNs cost seconds of retransmission each)."""


class InstantServer:
    """A threaded loopback server answering any path (or absolute URL, as a proxy) with a tiny PNG."""

    def __init__(self) -> None:
        _Instant.body = tiny_png()
        self.server = _Server(("127.0.0.1", 0), _Instant)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> InstantServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _serve_forever(conn: Any) -> None:
    with InstantServer() as server:
        conn.send(server.url)
        with contextlib.suppress(EOFError):
            conn.recv()


@contextlib.contextmanager
def instant_server_process() -> Any:
    """:class:`InstantServer` in a process of its own (its threads off the client's GIL); yields its URL."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_forever, args=(child,), daemon=True)
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the instant server did not start within 60 s")
        yield str(parent.recv())
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.kill()


# --- Children -------------------------------------------------------------------------------


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def child_plan(tcs_path: Path) -> dict[str, Any]:
    """The flow's chunked pipeline without the network: parse a chunk, a download report for its
    URLs, plan and shard it, next chunk; with the image store's index of every URL loaded as a
    re-run finds it. Seconds per phase (summed over chunks) and RSS after each (the highest)."""
    from faces_core.download.results import DownloadReport, StoredImage
    from faces_core.download.store import ImageStore
    from faces_core.ingest.pipeline import Collected
    from faces_core.ingest.sources.tcs import iter_tcs
    from flows.params import ingest_settings

    settings = ingest_settings()
    folder = tcs_path.parent / f"{tcs_path.stem}-store"
    _write_manifest(folder, tcs_path)  # not timed: the store a resumed run of this file finds
    phases: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    cpu0 = time.process_time()

    def mark(name: str, began: float) -> None:
        phase = phases.setdefault(name, {"seconds": 0.0, "rss_mib_after": 0.0})
        phase["seconds"] += time.perf_counter() - began
        phase["rss_mib_after"] = max(phase["rss_mib_after"], _rss_mib())

    phases["start"] = {"seconds": 0.0, "rss_mib_after": _rss_mib()}
    began = time.perf_counter()
    store = ImageStore(folder)  # every URL's manifest line, as a resumed run loads them
    mark("image store index", began)
    collected = Collected()
    counts = {"faces": 0, "jobs": 0, "chunks": 0}
    chunks = iter_tcs(str(tcs_path), max_line_bytes=settings.max_line_bytes, chunk_images=settings.chunk_images)
    while True:
        began = time.perf_counter()
        parsed = next(chunks, None)
        if parsed is None:
            break
        mark("parse+validate", began)
        began = time.perf_counter()
        report = DownloadReport()
        for record in parsed.records:
            if record.image_ref not in report.results:
                sha = hashlib.sha256(record.image_ref.encode()).hexdigest()
                report.results[record.image_ref] = StoredImage(store.path_for(sha, ".png"), sha, 400, "image/png")
        mark("download report", began)
        began = time.perf_counter()
        jobs = collected.add_downloaded("tcs", parsed, report)
        collected.cut(jobs, settings.shard_size)
        mark("plan+shard", began)
        counts["faces"] += len(parsed.records)
        counts["jobs"] += len(jobs)
        counts["chunks"] += 1
        del parsed, report, jobs
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "lines": sum(collected.images.values()),
        **counts,
        "shards": collected.shards,
        "stored": len(store),
        "chunk_images": settings.chunk_images,
        "rejections": len(collected.rejections),
        "seconds": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu0,
        "phases": phases,
    }


def _write_manifest(folder: Path, tcs_path: Path) -> None:
    """The image store's manifest with a line for every URL of the TCS file (no image files)."""
    folder.mkdir(parents=True, exist_ok=True)
    with tcs_path.open() as lines, (folder / "manifest.jsonl").open("w") as out:
        for line in lines:
            url = json.loads(line)["content"]
            sha = hashlib.sha256(url.encode()).hexdigest()
            entry = {"url": url, "sha256": sha, "ext": ".png", "size": 400, "content_type": "image/png"}
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")


def child_download(count: int, out: Path) -> dict[str, Any]:
    """``download_all`` of ``count`` distinct URLs against the instant server (params.yaml settings)."""
    from dataclasses import replace

    from faces_core.download.pool import download_all
    from faces_core.download.store import ImageStore
    from flows.params import ingest_settings

    settings = replace(ingest_settings().download, allow_private_hosts=True)
    with instant_server_process() as url:
        urls = (f"{url}/i/{k:07d}.png" for k in range(count))
        rss0 = _rss_mib()
        start = time.perf_counter()
        cpu0 = time.process_time()
        report = download_all(urls, ImageStore(out), settings)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    return {
        "urls": count,
        "stored": len(report.results),
        "rejected": len(report.rejections),
        "seconds": seconds,
        "cpu_s": cpu,
        "rss_mib_before": rss0,
        "rss_mib_after": _rss_mib(),
        "concurrency": settings.concurrency,
    }


def child_flow(tcs_path: Path, work: Path) -> dict[str, Any]:
    """The real ingest flow on ``tcs_path`` (images through the instant server as the host's
    proxy); how many task runs the flow run made, by name."""
    from collections import Counter

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest import ingest

    # The image host does not exist (like the demo's): the flow asks the resolver about it for
    # every URL (a failed answer is not cached), and this machine's resolver, offline, now and
    # then takes its 5 s timeout under 64 concurrent lookups. Answer "no such host" at once, as a
    # working resolver does, so the run measures the flow and not this machine's DNS.
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == HOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    with instant_server_process() as url:
        start = time.perf_counter()
        state: Any = ingest(
            tcs=str(tcs_path),
            imfdb_root="",
            out_dir=str(work / "out"),
            raw_dir=str(work / "raw"),
            host_proxies={f"http://{HOST}": url},
            return_state=True,
        )
        seconds = time.perf_counter() - start
    summary = state.result()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    names = Counter(run.task_key.rsplit("-", 1)[0] if run.task_key else run.name for run in runs)
    return {
        "seconds": seconds,
        "task_runs": len(runs),
        "by_task": dict(Counter(run.name.rsplit("-", 1)[0] for run in runs)),
        "by_key": dict(names),
        "faces": summary.get("faces") if isinstance(summary, dict) else None,
        "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
        if isinstance(summary, dict)
        else {},
    }


def _child_main(argv: list[str]) -> int:
    mode, *rest = argv
    if mode == "plan":
        out = child_plan(Path(rest[0]))
    elif mode == "download":
        out = child_download(int(rest[0]), Path(rest[1]))
    else:
        out = child_flow(Path(rest[0]), Path(rest[1]))
    print(json.dumps(out))
    return 0


def _run(mode: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    stdout, sample = run_child([sys.executable, "-m", "bench.million", "--child", mode, *args], env=env)
    report = json.loads(stdout.strip().splitlines()[-1])
    return {
        **report,
        "process_seconds": sample.wall_s,
        "process_cpu_s": sample.cpu_s,
        "peak_rss_mib": sample.peak_rss_mib,
    }


def measure(size: MillionBench, work: Path, log: bool = False) -> dict[str, Any]:
    """Every measurement of the simulation, as ``bench/recorded/million.json`` holds it."""
    from bench.report import machine_info

    plan: dict[str, Any] = {}
    download: dict[str, Any] = {}
    flow: dict[str, Any] = {}
    for n in size.sizes:
        path = write_tcs(work / f"tcs-{n}.jsonl", n)
        plan[str(n)] = _run("plan", str(path))
        path.unlink()
        if log:
            print(f"plan {n:,}: {json.dumps(plan[str(n)])}", flush=True)
        if n <= size.download_max:
            store = work / f"store-{n}"
            download[str(n)] = _run("download", str(n), str(store))
            shutil.rmtree(store, ignore_errors=True)
            if log:
                print(f"download {n:,}: {json.dumps(download[str(n)])}", flush=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    for n in size.flow_sizes:
        path = write_tcs(work / f"flow-{n}.jsonl", n)
        flow[str(n)] = _run("flow", str(path), str(work / f"flow-{n}"), env=env)
        if log:
            print(f"flow {n:,}: {json.dumps(flow[str(n)])}", flush=True)
    return {"machine": machine_info(), "plan": plan, "download": download, "flow": flow}


def _fit(runs: dict[str, Any], key: str) -> float:
    sizes = [float(n) for n in runs]
    return fit_exponent(sizes, [r[key] for r in runs.values()]) if len(sizes) > 1 else 0.0


def _runs_at(lines: int, shard_size: int, chunk_images: int) -> int:
    """Task runs of the ingest flow on ``lines`` one-face images (every one kept)."""
    chunks = max(1, -(-lines // chunk_images))
    shards = sum(-(-min(chunk_images, lines - k * chunk_images) // shard_size) for k in range(chunks))
    return (chunks + 1) + chunks + shards + 1


def figures(data: dict[str, Any], shard_size: int, machine: str) -> tuple[list[Figure], list[str]]:
    """Figures and notes of a :func:`measure` report (this run's or a recorded one)."""
    plan, download, flow = data["plan"], data["download"], data["flow"]
    chunk_images = int(min((r.get("chunk_images", 50_000) for r in plan.values()), default=50_000))
    figs: list[Figure] = []
    notes: list[str] = []
    for n, r in plan.items():
        phases = ", ".join(f"{k} {v['seconds']:.1f} s -> {v['rss_mib_after']:.0f} MiB" for k, v in r["phases"].items())
        figs.append(
            Figure(
                f"parse + validate + plan, {int(n):,} lines",
                int(n) / r["seconds"],
                "lines/s",
                machine=machine,
                note=f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, {r['shards']:,} shards; {phases}",
            )
        )
    largest = max(plan, key=int)
    time_b, mem_b = _fit(plan, "seconds"), _fit(plan, "peak_rss_mib")
    sizes = f"{min(plan, key=int)} -> {largest} lines"
    figs.append(
        Figure(
            f"parse + validate + plan: time exponent ({sizes})",
            time_b,
            "",
            target=f"< {TARGET_TIME_EXPONENT:g}",
            met=time_b < TARGET_TIME_EXPONENT,
            machine=machine,
            failed=impossible_exponent(time_b),
        )
    )
    peak = plan[largest]["peak_rss_mib"] * MIB / 1e6
    figs.append(
        Figure(
            f"parse + validate + plan: peak memory at {int(largest):,} lines",
            peak,
            "MB",
            target=f"< {TARGET_MEMORY_MB:,.0f} MB",
            met=peak < TARGET_MEMORY_MB,
            machine=machine,
            note=f"memory exponent {mem_b:.2f} over {sizes}",
        )
    )
    if peak >= TARGET_MEMORY_MB:
        phases = plan[largest]["phases"]
        steps = list(phases.values())
        grew = {
            name: steps[i]["rss_mib_after"] - steps[i - 1]["rss_mib_after"] for i, name in enumerate(phases) if i > 0
        }
        notes.append(
            f"Where the memory goes at {int(largest):,} lines (RSS growth per phase, highest over the chunks): "
            + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in grew.items())
            + ". Per chunk the run holds that chunk's records, download report and jobs; across chunks, the "
            "parse's duplicate index (faces_core/ingest/sources/tcs.py:_FileIndex), the image store's URL index "
            "(faces_core/download/store.py) and the duplicate-image tracker (faces_core/validate.py)."
        )
    for n, r in download.items():
        figs.append(
            Figure(
                f"download scheduler, {int(n):,} instant URLs",
                int(n) / r["seconds"],
                "URLs/s",
                machine=machine,
                note=(
                    f"{r['seconds']:.1f} s, {r['stored']:,} stored, {r['rejected']} rejected, peak RSS "
                    f"{r['peak_rss_mib']:.0f} MiB (server in its own process, not counted), "
                    f"{1000 * r['cpu_s'] / int(n):.2f} CPU ms per URL, concurrency {r['concurrency']}"
                ),
            )
        )
    if len(download) > 1:
        time_d, mem_d = _fit(download, "seconds"), _fit(download, "peak_rss_mib")
        figs.append(
            Figure(
                f"download scheduler: time exponent ({min(download, key=int)} -> {max(download, key=int)} URLs)",
                time_d,
                "",
                target=f"< {TARGET_TIME_EXPONENT:g}",
                met=time_d < TARGET_TIME_EXPONENT,
                machine=machine,
                failed=impossible_exponent(time_d),
                note=f"memory exponent {mem_d:.2f}",
            )
        )
        if int(max(download, key=int)) < int(largest):
            per_url = (
                download[max(download, key=int)]["peak_rss_mib"] - download[min(download, key=int)]["peak_rss_mib"]
            ) / (int(max(download, key=int)) - int(min(download, key=int)))
            notes.append(
                f"The download scheduler was measured up to {int(max(download, key=int)):,} URLs, not "
                f"{int(largest):,}: at the loopback rate on 2 shared cores 1M URLs would take about "
                f"{int(largest) / (int(max(download, key=int)) / download[max(download, key=int)]['seconds']) / 60:.0f} "
                f"min. One download_all call grows by about {per_url * 1024:.1f} KiB per URL between the two "
                f"sizes (its report holds a result per URL); the flow calls it once per {chunk_images:,}-image "
                f"chunk, so that is about {per_url * chunk_images:.0f} MiB at a time, whatever the file's length. "
                "What stays for the whole run is the image store's URL index, in the plan figures above "
                "('image store index': a resumed run loads a line per stored URL)."
            )
    if flow:
        counts = {int(n): r["task_runs"] for n, r in flow.items()}
        shards = {int(n): -(-int(n) // shard_size) for n in flow}
        fixed = {n: counts[n] - shards[n] for n in counts}
        per_item = len(set(fixed.values())) != 1 or any(c >= n for n, c in counts.items())
        figs.append(
            Figure(
                "Prefect flow: task runs per run, " + ", ".join(f"{n:,} lines: {c}" for n, c in counts.items()),
                float(max(counts.values())),
                "task runs",
                target=f"no task run per item ({fixed[min(fixed)]} + one per {shard_size:,}-image shard)",
                met=not per_item,
                machine=machine,
                note="; ".join(
                    f"{int(n):,} lines: {json.dumps(r['by_task'])} in {r['seconds']:.1f} s" for n, r in flow.items()
                )
                + f"; at {int(largest):,} lines that is {_runs_at(int(largest), shard_size, chunk_images):,} task runs "
                f"(a parse and a download per {chunk_images:,}-image chunk, one more parse that finds the end, "
                "one per shard, one write)",
            )
        )
    return figs, notes


def run(work: Path | None = None, size: MillionBench | None = None) -> BenchResult:
    """For ``python -m bench``: the recorded 1M run (``python -m bench.million``) when ``size``
    is None, else a fresh measurement at ``size`` (the smoke test)."""
    from flows.params import ingest_settings

    shard_size = ingest_settings().shard_size
    result = BenchResult(NAME, "Million-URL simulation: parse + validate + plan, download scheduler, Prefect task runs")
    if size is None and RECORDED.exists():
        data = json.loads(RECORDED.read_text())
        machine = (
            f"this machine, {data['machine']['date']}, commit {data['machine']['commit']} (python -m bench.million)"
        )
        result.figures, result.notes = figures(data, shard_size, machine)
        result.notes.append(
            f"Recorded by `python -m bench.million` (bench/recorded/million.json, {data['machine']['date']}, load "
            f"average {' / '.join(str(x) for x in data['machine']['load_average'])} at start); it takes several "
            "minutes, so `make bench` shows the recorded run instead of repeating it."
        )
        result.details = data
        return result
    work = work or Path(tempfile.mkdtemp(prefix="faces-bench-million-"))
    data = measure(size or MillionBench(), work)
    result.figures, result.notes = figures(data, shard_size, "this machine")
    result.details = data
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.million", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--download-max", type=int, default=100_000)
    parser.add_argument("--flow-sizes", default="1000,3000")
    parser.add_argument("--out", type=Path, default=RECORDED)
    args = parser.parse_args(argv)
    size = MillionBench(
        sizes=tuple(int(x) for x in args.sizes.split(",")),
        download_max=args.download_max,
        flow_sizes=tuple(int(x) for x in args.flow_sizes.split(",") if x),
    )
    with tempfile.TemporaryDirectory(prefix="faces-bench-million-") as tmp:
        data = measure(size, Path(tmp), log=True)
    write_json(data, args.out)
    from flows.params import ingest_settings

    figs, notes = figures(data, ingest_settings().shard_size, "this machine")
    for f in figs:
        print(f"{f.measure}: {f.ours:,.3g} {f.unit} {f.note} {'' if f.met is None else ('met' if f.met else 'MISSED')}")
    for note in notes:
        print(note)
    print(f"wrote {args.out}")
    return 0 if all(f.met is not False for f in figs) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
