"""Prefect tasks of the annotate flows: find files, annotate a shard, publish the run's table."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.logging import get_run_logger

from faces_core import objstore
from faces_core.annotate import remote
from faces_core.annotate.inputs import FileJob, find_files
from faces_core.annotate.remote import run_shard_anywhere
from faces_core.annotate.shard import ShardReport, ShardRun
from tasks.progress import Progress


@task(name="find-files", cache_policy=NO_CACHE)
def find_files_task(inputs: Sequence[str], out: str) -> list[FileJob]:
    """Walk the input folders (the output folder is never entered)."""
    jobs = find_files(inputs, exclude=[out])
    get_run_logger().info("%d files under %s", len(jobs), ", ".join(inputs))
    return jobs


# One shard at a time per worker holds the detector (the flow's task runner sees to that); runs
# that share one GPU take turns with `faces serve --limit 1`. (A "gpu" tag used to claim a
# concurrency limit that nothing created.)
@task(name="annotate-shard", cache_policy=NO_CACHE)
def annotate_shard(run: ShardRun, jobs: Sequence[FileJob], shard_index: int, done: dict[str, set[str]]) -> ShardReport:
    """Annotate a shard of files and commit its Parquet parts (the engine is loaded once per process)."""
    report = run_shard_anywhere(run, shard_index, jobs, done)
    get_run_logger().info(
        "shard %d: %d files, %d skipped, %d faces in %d frames, %d errors %s (%.1f s)",
        shard_index,
        report.files,
        report.skipped,
        report.faces,
        report.frames,
        report.errors,
        report.reasons,
        report.seconds,
    )
    return report


@task(name="commit-run", cache_policy=NO_CACHE)
def commit_run(location: str, run_id: str) -> int:
    """Commit a run whose shards uploaded their own parts: one manifest, written last."""
    manifest = remote.commit_run(location, run_id)
    removed = objstore.recover(location)  # prefixes of runs that died before their commit
    get_run_logger().info(
        "committed run %s to %s: %d files%s",
        run_id,
        objstore.shown(location),
        len(manifest.files),
        f"; removed {len(removed)} uncommitted run(s)" if removed else "",
    )
    return len(manifest.files)


def publish_summary(key: str, summary: dict[str, Any]) -> None:
    """Table artifact of a run's counts: files, skipped, faces, frames, errors, images/s."""
    rows = [{"measure": k, "value": str(v)} for k, v in summary.items() if k != "reasons"]
    rows += [{"measure": f"error: {reason}", "value": str(n)} for reason, n in summary["reasons"].items()]
    create_table_artifact(table=rows, key=key, description="Files, faces, errors and images/s of this run")


class PrefectSteps:
    """:class:`~faces_core.annotate.pipeline.AnnotateSteps` as the tasks above: the annotate flows
    run :func:`~faces_core.annotate.pipeline.annotate_run` with these (one task per shard,
    submitted together, collected as they finish, with a progress artifact), so their wiring
    is the one the tests and benchmarks run with ``LocalSteps``.

    Args:
        key: Artifact key prefix of this run (``annotate``, ``annotate-inbox``).
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def find_files(self, inputs: Sequence[str], out: str) -> list[FileJob]:
        return find_files_task(inputs, out)

    def run_shards(
        self, run: ShardRun, chunks: Sequence[Sequence[FileJob]], done: Sequence[dict[str, set[str]]]
    ) -> Iterator[tuple[int, ShardReport]]:
        futures = [annotate_shard.submit(run, chunk, i, done[i]) for i, chunk in enumerate(chunks)]
        index = {id(future): i for i, future in enumerate(futures)}
        files = sum(len(chunk) for chunk in chunks)
        progress = Progress(f"{self.key}-progress", f"Annotating {files} files in {len(chunks)} shards")
        for finished, future in enumerate(as_completed(futures), start=1):
            yield index[id(future)], future.result()
            progress(finished, len(futures))
