"""Prefect tasks that bring a remote location (``s3://``, ``gs://``, ``memory://``) to local disk
before a stage and commit a stage's output to one after it (:mod:`faces_core.objstore`).

Each is one task per location, never per file, so the UI shows what was moved and how long it
took; the logs name locations without credentials.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from faces_core import objstore


@task(name="fetch-location", cache_policy=NO_CACHE)
def fetch(location: str, dest: str, committed: bool = True, single_file: bool = False) -> str:
    """Local copy of ``location`` at ``dest``: its committed files (``committed``), every object
    of a plain folder, or one object (``single_file``). Returns the local path."""
    get_run_logger().info("fetching %s to %s", objstore.shown(location), dest)
    if single_file:
        return str(objstore.download_file(location, Path(dest)))
    if committed:
        return str(objstore.fetch(location, dest, missing_ok=True))
    return str(objstore.download_tree(location, dest))


@task(name="publish-location", cache_policy=NO_CACHE)
def publish(local_root: str, location: str, run_id: str, content_addressed: bool = False) -> int:
    """Commit ``local_root`` to ``location`` as run ``run_id`` (manifest last); the file count."""
    manifest = objstore.publish(local_root, location, run_id, content_addressed=content_addressed)
    removed = objstore.recover(location)
    get_run_logger().info(
        "committed %d files to %s (run %s)%s",
        len(manifest.files),
        objstore.shown(location),
        run_id,
        f"; removed {len(removed)} uncommitted run(s)" if removed else "",
    )
    return len(manifest.files)
