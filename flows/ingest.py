"""The ``ingest`` flow: parse TCS and IMFDB, download, validate, partition into Parquet.

Run it as ``python -m flows.ingest``, ``faces ingest`` or, once served,
``prefect deployment run ingest/ingest``. Parameters left at None come from params.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from faces_core import report
from faces_core.ingest import pipeline as core
from faces_core.ingest.partition import OutputError, output_lock, recover, shard, staged
from flows.params import ingest_inputs, ingest_settings
from tasks import ingest as t


# Threads suffice: downloads wait on the network, shards wait on the process pool.
@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=False)  # type: ignore[arg-type]
def ingest(
    tcs: str | None = None,
    imfdb_root: str | None = None,
    out_dir: str | None = None,
    raw_dir: str | None = None,
    concurrency: int | None = None,
    shard_size: int | None = None,
    workers: int | None = None,
    proxy: str | None = None,
) -> dict[str, Any]:
    """Ingest face datasets into ``<out_dir>/faces`` (Parquet by source and size bucket).

    Args:
        tcs: TCS JSON Lines file or URL; None = params.yaml ingest.tcs; "" = skip TCS.
        imfdb_root: IMFDB_final directory; None = params.yaml ingest.imfdb_root; "" = skip.
        out_dir: Output directory (faces/, errors.parquet, summary.json).
        raw_dir: Where downloaded images are stored by content hash (kept across runs).
        concurrency: Parallel downloads.
        shard_size: Images per partition task.
        workers: Partition processes (0 = one per CPU core).
        proxy: HTTP(S) proxy for image downloads (else http_proxy/https_proxy apply).

    Returns:
        The summary written to summary.json.
    """
    inputs = ingest_inputs(tcs=tcs, imfdb_root=imfdb_root)
    tcs, imfdb_root = inputs["tcs"], inputs["imfdb_root"]
    settings = ingest_settings(
        out_dir=out_dir, raw_dir=raw_dir, shard_size=shard_size, workers=workers, concurrency=concurrency, proxy=proxy
    )
    core.check_inputs(tcs, imfdb_root)
    # One run per output directory at a time; a killed run's leftovers are settled first.
    with output_lock(settings.out_dir, settings.lock_wait_s):
        recover(settings.out_dir)
        collected = core.Collected()
        tcs_future = t.parse_tcs.submit(tcs) if tcs else None
        imfdb_future = t.parse_imfdb.submit(imfdb_root) if imfdb_root else None
        if tcs_future is not None:
            parsed = tcs_future.result()
            collected.add_downloaded("tcs", parsed, t.download_images(parsed.records, settings))
        if imfdb_future is not None and imfdb_root:
            parsed = imfdb_future.result()
            collected.add_local("imfdb", parsed, *t.hash_local_images(parsed.records, imfdb_root))

        jobs = collected.plan()
        with staged(settings.out_dir, uuid.uuid4().hex[:8]) as staging:
            futures = [
                t.partition_shard_task.submit(jobs_shard, str(staging), i, settings)
                for i, jobs_shard in enumerate(shard(jobs, settings.shard_size))
            ]
            progress = t.Progress("ingest-partition", f"Cropping faces of {len(jobs)} images in {len(futures)} shards")
            for done, future in enumerate(as_completed(futures), start=1):
                collected.rejections += future.result().rejections
                progress(done, len(futures))
            return t.write_outputs(str(staging), settings, collected.rejections, collected.images)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.ingest [--tcs ...] [--imfdb-root ...]``."""
    parser = argparse.ArgumentParser(prog="faces ingest", description="Ingest face datasets into size-bucket Parquet.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the ingest command (shared by ``faces ingest`` and ``python -m flows.ingest``)."""
    parser.add_argument("--tcs", help="TCS JSON Lines file or URL ('' skips; default: params.yaml)")
    parser.add_argument("--imfdb-root", help="IMFDB_final directory ('' skips; default: params.yaml)")
    parser.add_argument("--out-dir", help="output directory (default: params.yaml ingest.out_dir)")
    parser.add_argument("--raw-dir", help="downloaded image store (default: params.yaml ingest.raw_dir)")
    parser.add_argument("--concurrency", type=int, help="parallel downloads")
    parser.add_argument("--shard-size", type=int, help="images per partition task")
    parser.add_argument("--workers", type=int, help="partition processes (0 = CPU cores)")
    parser.add_argument("--proxy", help="HTTP proxy for image downloads")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the flow with parsed flags and print where the outputs are."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    inputs = ingest_inputs(tcs=args.tcs, imfdb_root=args.imfdb_root)
    try:
        core.check_inputs(inputs["tcs"], inputs["imfdb_root"])
    except core.IngestInputError as exc:
        print(f"faces ingest: {exc}", file=sys.stderr)
        return 2
    try:
        summary = ingest(
            tcs=args.tcs,
            imfdb_root=args.imfdb_root,
            out_dir=args.out_dir,
            raw_dir=args.raw_dir,
            concurrency=args.concurrency,
            shard_size=args.shard_size,
            workers=args.workers,
            proxy=args.proxy,
        )
    except OutputError as exc:
        print(f"faces ingest: {exc}", file=sys.stderr)
        return 1
    out = ingest_settings(out_dir=args.out_dir).out_dir
    print(report.format_summary(summary, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
