"""Prefect tasks of the ingest flow: each one calls one faces_core step and logs counts."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.logging import get_run_logger

from faces_core import objstore, report
from faces_core.download.results import DownloadReport
from faces_core.errors import Rejection, count_by_reason
from faces_core.ingest import objects
from faces_core.ingest import pipeline as core
from faces_core.ingest.partition import ImageJob, ShardResult, partition_shard
from faces_core.ingest.sources import imfdb, tcs
from faces_core.records import FaceRecord, ParseResult
from faces_core.validate import MAX_CROP_BYTES
from tasks.progress import Progress


def _log_parse(source: str, result: ParseResult) -> ParseResult:
    get_run_logger().info(
        "%s: %d images, %d faces, %d rejections %s",
        source,
        result.images,
        len(result.records),
        len(result.rejections),
        count_by_reason(result.rejections),
    )
    return result


@task(name="parse-tcs", cache_policy=NO_CACHE)
def parse_tcs_chunk(chunks: Iterator[ParseResult]) -> ParseResult | None:
    """The next chunk of a streamed TCS file (``ingest.chunk_images`` images), or None at its end.

    One task run per chunk: a million-line file is a few dozen runs, and each shows its counts.
    """
    chunk = next(chunks, None)
    return None if chunk is None else _log_parse("tcs", chunk)


@task(name="parse-imfdb", cache_policy=NO_CACHE)
def parse_imfdb(
    root: str, max_line_bytes: int = imfdb.MAX_LINE_BYTES, workers: int = 1, max_file_bytes: int = imfdb.MAX_TXT_BYTES
) -> ParseResult:
    """Walk an IMFDB_final tree, parsing its movie folders in the shard pool when ``workers`` > 1."""
    pool = _pool(workers) if workers > 1 else None
    return _log_parse("imfdb", imfdb.scan_imfdb(root, max_line_bytes, pool, max_file_bytes))


@task(name="download-images", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def download_images(records: Sequence[FaceRecord], settings: core.IngestSettings) -> DownloadReport:
    """Download every image URL concurrently (resumable: stored images are not fetched again)."""
    urls = {r.image_ref for r in records}
    progress = Progress("ingest-download", f"Downloading {len(urls)} images")
    report = core.download_images(records, settings, progress=progress)
    cached = sum(1 for s in report.results.values() if s.from_cache)
    get_run_logger().info(
        "download: %d stored (%d already present), %d failed %s",
        len(report.results),
        cached,
        len(report.rejections),
        count_by_reason(report.rejections),
    )
    return report


@task(name="hash-local-images", cache_policy=NO_CACHE)
def hash_local_images(
    records: Sequence[FaceRecord], root: str, workers: int = 1, max_bytes: int = MAX_CROP_BYTES
) -> tuple[dict[str, tuple[str, str]], dict[str, str], list[Rejection]]:
    """Hash IMFDB crops (for duplicate detection), make their paths portable, refuse escapes."""
    return core.local_files(records, root, _pool(workers) if workers > 1 else None, max_bytes)


_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ProcessPoolExecutor:
    """One spawn-based process pool per flow process: shards are CPU-bound (decode, encode)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = core.process_pool(workers, "spawn")
            atexit.register(_POOL.shutdown, cancel_futures=True)
        return _POOL


@task(name="partition-shard", cache_policy=NO_CACHE)
def partition_shard_task(
    jobs: Sequence[ImageJob], staging: str, index: int, settings: core.IngestSettings
) -> ShardResult:
    """Validate, crop and bucket one shard of images in a worker process (with object-store
    locations: its images fetched and its parts uploaded wherever it runs)."""
    faces_dir = str(Path(staging) / core.FACES_DIR)
    where = settings.objects
    if where is not None:
        jobs = objects.localise_jobs(jobs, where)
    target = objects.shard_staging(faces_dir, where) if where is not None else faces_dir
    if settings.worker_count <= 1:
        result = partition_shard(jobs, target, index, settings.partition, settings.validate)
    else:
        future = _pool(settings.worker_count).submit(
            partition_shard, jobs, target, index, settings.partition, settings.validate
        )
        result = future.result()
    if where is not None and target != faces_dir:
        result = objects.upload_parts(result, target, where)
    get_run_logger().info(
        "shard %d: %d images, %d faces kept, %d rejected", index, len(jobs), result.kept, len(result.rejections)
    )
    return result


@task(name="write-outputs", cache_policy=NO_CACHE)
def write_outputs(
    staging: str, settings: core.IngestSettings, rejections: Sequence[Rejection], images: dict[str, int]
) -> dict[str, Any]:
    """Write error log and summary, swap the dataset into place, publish a summary artifact."""
    summary = core.finalize(Path(staging), settings, rejections, images)
    create_markdown_artifact(markdown=report.summary_markdown(summary, settings.out_dir), key="ingest-summary")
    return summary


class PrefectSteps:
    """:class:`~faces_core.ingest.pipeline.IngestSteps` as the tasks above: the flow runs
    :func:`~faces_core.ingest.pipeline.ingest_run` with these, so its wiring is the one the
    tests and benchmarks run with ``LocalSteps``.

    Parsing runs in two task-runner threads at once; shards are submitted together and
    collected as they finish, with a progress artifact; on Dask each shard runs in its worker.
    """

    def parse_tcs(self, tcs_input: str, settings: core.IngestSettings) -> Iterator[ParseResult]:
        """Chunks parsed in the flow's process as the run asks for them (a TCS file in object
        storage is fetched here first)."""
        if objstore.is_object_url(tcs_input):
            tcs_input = str(objstore.download_file(tcs_input))
        chunks = tcs.iter_tcs(
            tcs_input,
            max_line_bytes=settings.max_line_bytes,
            max_bytes=settings.max_tcs_bytes,
            chunk_images=settings.chunk_images,
        )
        while (chunk := parse_tcs_chunk(chunks)) is not None:
            yield chunk

    def start_parse_imfdb(self, root: str, settings: core.IngestSettings) -> Callable[[], ParseResult]:
        args = (root, settings.max_line_bytes, settings.worker_count, settings.max_annotation_bytes)
        if settings.objects is not None and settings.objects.imfdb_url is not None:
            # The tree was fetched to this machine: parse it here, not on a worker without it
            # (the crops are hashed here too; the shards fetch theirs from the bucket).
            parsed = parse_imfdb(*args)
            return lambda: parsed
        return parse_imfdb.submit(*args).result

    def download(self, records: Sequence[FaceRecord], settings: core.IngestSettings) -> DownloadReport:
        return download_images(records, settings)

    def hash_local(
        self, records: Sequence[FaceRecord], root: str, settings: core.IngestSettings
    ) -> tuple[dict[str, tuple[str, str]], dict[str, str], list[Rejection]]:
        return hash_local_images(records, root, settings.worker_count, settings.max_crop_bytes)

    def partition(
        self, shards: Sequence[Sequence[ImageJob]], staging: Path, settings: core.IngestSettings, first: int = 0
    ) -> Iterator[ShardResult]:
        where = settings.objects
        if where is not None and where.raw_url is not None:
            # Shards on other machines read this chunk's images from the bucket: they go there
            # now, before the shards start; the store's manifest is committed after the last chunk.
            objects.upload_images([job for jobs in shards for job in jobs], where)
        futures = [
            partition_shard_task.submit(jobs, str(staging), first + i, settings) for i, jobs in enumerate(shards)
        ]
        images = sum(len(jobs) for jobs in shards)
        progress = Progress("ingest-partition", f"Cropping faces of {images} images in {len(futures)} shards")
        for done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            if where is not None:
                objects.gather_parts(result, str(Path(staging) / core.FACES_DIR), where)
            yield result
            progress(done, len(futures))

    def finalize(
        self,
        staging: Path,
        settings: core.IngestSettings,
        rejections: Sequence[Rejection],
        images: dict[str, int],
    ) -> dict[str, Any]:
        return write_outputs(str(staging), settings, rejections, images)

    def phase(self, name: str) -> None:
        """Phases are the task runs themselves in the Prefect UI."""
