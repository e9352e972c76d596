"""A Prefect-free ingest in a child process, for fault tests that kill or starve it.

``python -m tests.reliability.ingest_driver --out-dir ... --raw-dir ...`` parses the given
sources, runs :func:`faces_core.ingest.pipeline.run_ingest` and prints ``phase <name>
<seconds since start> <unix time>`` on stdout as each phase begins (``parse``, ``download``, ``hash``,
``partition``, ``write``, ``commit``, ``done``) and the wall clock, flushed, so a parent can time a SIGKILL
into a chosen phase and tell which phase a kill hit. Settings are small and fast: the
tests serve images from a loopback proxy with short delays.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from faces_core.download import DownloadSettings
from faces_core.ingest.pipeline import IngestSettings, run_ingest
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.storage import OutputError

START = time.monotonic()


def phase(name: str) -> None:
    """Announce a phase to the parent process."""
    print(f"phase {name} {time.monotonic() - START:.4f} {time.time():.4f}", flush=True)


def settings_for(out_dir: str, raw_dir: str, proxy: str | None, lock_wait_s: float = 0.0) -> IngestSettings:
    """Settings of every fault test: one process, small shards, quick retries."""
    download = DownloadSettings(
        concurrency=4,
        timeout_s=2.0,
        retries=2,
        backoff_s=0.01,
        backoff_max_s=0.05,
        proxies={"http": proxy, "https": proxy} if proxy else None,
    )
    return IngestSettings(
        raw_dir=raw_dir, out_dir=out_dir, shard_size=4, workers=1, lock_wait_s=lock_wait_s, download=download
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ingest_driver")
    parser.add_argument("--tcs", default="")
    parser.add_argument("--imfdb-root", default="")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--raw-dir", required=True)
    parser.add_argument("--proxy")
    parser.add_argument("--lock-wait", type=float, default=0.0)
    args = parser.parse_args(argv)
    phase("parse")
    tcs = read_tcs(args.tcs) if args.tcs else None
    imfdb = scan_imfdb(args.imfdb_root) if args.imfdb_root else None
    settings = settings_for(args.out_dir, args.raw_dir, args.proxy, args.lock_wait)
    try:
        summary = run_ingest(tcs, imfdb, args.imfdb_root or None, settings, on_phase=phase)
    except OutputError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    phase("done")
    print(f"faces {summary['faces']} rejections {summary['rejections']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
