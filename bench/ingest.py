"""Ingest benchmarks: each result is a ratio against a baseline measured in the same run.

    python -m bench.ingest [--imfdb-root DIR] [--tcs FILE] [--latency 0.05] [--out data/bench/ingest.json]

1. **download**: the TCS URLs (the real file in ../shared when present, else the bundled
   sample) answered by a loopback server with a fixed per-request latency standing in for
   the network. Baseline: one request at a time, as the old script did; candidate: the
   pipeline's concurrent downloader with the params.yaml concurrency.
2. **imfdb**: the whole IMFDB ingest (parse, hash, validate, crop, bucket, write Parquet)
   without Prefect. Baseline: one process; candidate: one process per core. Its absolute
   time is also checked against the 2-minute budget (meaningful on this 2-core machine).

Absolute times depend on the machine and its load; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from faces_core.ingest.download import ImageStore, download_all
from faces_core.ingest.pipeline import IngestSettings, run_ingest
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.sample.tcs import routes_for_jsonl, write_tcs_sample
from faces_core.testing import LoopbackServer, Route
from flows.params import ingest_settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IMFDB_BUDGET_S = 120.0
T = TypeVar("T")


def _timed(fn: Callable[..., T], *args: Any) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def bench_download(tcs: Path, latency: float, settings: IngestSettings, work: Path) -> dict[str, Any]:
    """Sequential vs concurrent download of every URL of a TCS file through a slow loopback."""
    parsed = read_tcs(tcs)
    urls = list(dict.fromkeys(r.image_ref for r in parsed.records))
    routes = {
        url: Route(body=r.body, content_type=r.content_type, delay=latency) for url, r in routes_for_jsonl(tcs).items()
    }
    results: dict[str, Any] = {"urls": len(urls), "latency_s": latency}
    with LoopbackServer(routes) as server:
        base = replace(settings.download, proxies={"http": server.proxy_url, "https": server.proxy_url})
        for name, concurrency in (("baseline_sequential", 1), ("candidate_concurrent", base.concurrency)):
            store = ImageStore(work / name)
            seconds, report = _timed(download_all, urls, store, replace(base, concurrency=concurrency))
            results[name] = {"concurrency": concurrency, "seconds": round(seconds, 3), "stored": len(report.results)}
            resumed, again = _timed(download_all, urls, ImageStore(store.root), base)
            results[name]["resume_seconds"] = round(resumed, 3)
            results[name]["resume_fetched"] = again.downloaded
    results["speedup"] = round(
        results["baseline_sequential"]["seconds"] / results["candidate_concurrent"]["seconds"], 2
    )
    return results


def bench_imfdb(root: Path, settings: IngestSettings, work: Path) -> dict[str, Any]:
    """One process vs one per core for the whole IMFDB ingest (no Prefect)."""
    results: dict[str, Any] = {"root": str(root)}
    for name, workers in (("baseline_one_process", 1), ("candidate_all_cores", 0)):
        out = work / name
        run_settings = replace(settings, out_dir=str(out), raw_dir=str(work / "raw"), workers=workers)
        seconds, summary = _timed(run_ingest, None, scan_imfdb(root), root, run_settings)
        results[name] = {
            "workers": run_settings.worker_count,
            "seconds": round(seconds, 3),
            "faces": summary["faces"],
            "rejections": summary["rejections"],
            "faces_per_s": round(summary["faces"] / seconds, 1),
        }
    results["speedup"] = round(
        results["baseline_one_process"]["seconds"] / results["candidate_all_cores"]["seconds"], 2
    )
    results["budget_s"] = IMFDB_BUDGET_S
    results["within_budget"] = results["candidate_all_cores"]["seconds"] < IMFDB_BUDGET_S
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--imfdb-root", type=Path, default=SHARED / "datasets" / "imfdb" / "IMFDB_final")
    parser.add_argument("--tcs", type=Path, default=SHARED / "reference" / "tcs" / "Face_Recognition.json")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request at the loopback server")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "bench" / "ingest.json")
    args = parser.parse_args(argv)
    settings = ingest_settings()
    work = Path(tempfile.mkdtemp(prefix="faces-bench-"))
    try:
        if not args.tcs.exists() or not args.imfdb_root.exists():
            print(f"../shared data not found; benchmarking the bundled sample instead (in {work})")
        tcs = args.tcs if args.tcs.exists() else write_tcs_sample(work / "sample-tcs").jsonl
        imfdb = args.imfdb_root
        if not imfdb.exists():
            imfdb = work / "sample-imfdb" / "IMFDB_final"
            write_imfdb_sample(imfdb, actors=8, movies=3)
        report = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "download": bench_download(tcs, args.latency, settings, work / "download"),
            "imfdb": bench_imfdb(imfdb, settings, work / "imfdb"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    d, i = report["download"], report["imfdb"]
    print(
        f"download  {d['urls']} URLs @ {d['latency_s'] * 1000:.0f} ms: sequential {d['baseline_sequential']['seconds']} s, "
        f"concurrent {d['candidate_concurrent']['seconds']} s -> {d['speedup']}x; "
        f"re-run fetched {d['candidate_concurrent']['resume_fetched']} in {d['candidate_concurrent']['resume_seconds']} s"
    )
    print(
        f"imfdb     {i['candidate_all_cores']['faces']} faces: 1 process {i['baseline_one_process']['seconds']} s, "
        f"{i['candidate_all_cores']['workers']} processes {i['candidate_all_cores']['seconds']} s -> {i['speedup']}x; "
        f"within {IMFDB_BUDGET_S:.0f} s budget: {i['within_budget']}"
    )
    print(f"report:   {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
