"""Ingest shards that share no disk with the flow: images read from, parts written to object storage.

When an ingest run's locations are URLs (:class:`~faces_core.ingest.settings.ObjectLocations`),
a partition shard may run on a Dask worker with a disk of its own. Wherever it runs, it:

1. fetches each of its images from the bucket into its own machine's mirror: a downloaded
   image through the image store's committed manifest, an IMFDB crop as a plain object;
2. partitions into its own staging folder, as always;
3. uploads its parts under ``<out>/_runs/<run_id>/faces/`` and reports their URLs.

The flow then brings the parts it lacks into its staging folder (:func:`gather_parts`), writes
the summary and error log, and commits the run with one manifest, written last.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from faces_core import objstore
from faces_core.ingest.partition import ImageJob, ShardResult
from faces_core.ingest.settings import IngestSettings, ObjectLocations

FACES_PREFIX = "faces"


def on_mirrors(settings: IngestSettings, imfdb_url: str | None) -> tuple[IngestSettings, dict[str, str]]:
    """Settings whose ``out_dir`` and ``raw_dir`` URLs are swapped for their local mirrors, with
    the :class:`ObjectLocations` shards use elsewhere; and {field: URL} to publish after the run.
    Unchanged when neither is a URL (no I/O here)."""
    remote = {k: getattr(settings, k) for k in ("raw_dir", "out_dir") if objstore.is_object_url(getattr(settings, k))}
    if not remote:
        return settings, remote
    out, raw = remote.get("out_dir"), remote.get("raw_dir")
    urls = [u for u in (out, raw, imfdb_url) if u is not None]
    where = ObjectLocations(
        objstore.new_run_id(), out, raw, imfdb_url, tuple((str(objstore.mirror(u)), u) for u in urls)
    )
    local = replace(
        settings,
        out_dir=str(objstore.mirror(out)) if out else settings.out_dir,
        raw_dir=str(objstore.mirror(raw)) if raw else settings.raw_dir,
        objects=where,
    )
    return local, remote


def _url_of(path: str, where: ObjectLocations) -> tuple[str, str] | None:
    """(location URL, path relative to it) for a file under one of the flow's mirrors."""
    for local, url in where.mirrors:
        if path == local or path.startswith(local.rstrip(os.sep) + os.sep):
            return url, Path(path).relative_to(local).as_posix()
    return None


def localise_jobs(jobs: Sequence[ImageJob], where: ObjectLocations) -> list[ImageJob]:
    """The shard's images as files on this machine: fetched from the bucket unless here already."""
    here = _same_machine(where)
    stored: objstore.Manifest | None = None  # the image store's, read when first needed
    local: list[ImageJob] = []
    for job in jobs:
        found = _url_of(job.path, where)
        if found is None or (here and Path(job.path).is_file()):
            local.append(job)
            continue
        url, rel = found
        target = objstore.mirror(url) / rel
        if not target.is_file():
            key = rel
            if url == where.raw_url:  # the image store: through its committed manifest
                stored = stored or objstore.read_manifest(url) or objstore.Manifest("", {})
                key = stored.files[rel].key if rel in stored.files else rel
            objstore.download_file(f"{url}/{key}", target)
        local.append(replace(job, path=str(target)))
    return local


def upload_images(jobs: Sequence[ImageJob], where: ObjectLocations) -> int:
    """Put the downloaded images these jobs read into the image store's bucket (content-addressed
    keys, not yet committed) so that shards on other machines find them; the number uploaded.

    A run uploads each chunk's images before that chunk's shards start and commits the store's
    manifest once, after the last chunk (``flows.ingest``).
    """
    if where.raw_url is None:
        return 0
    names = []
    for job in jobs:
        found = _url_of(job.path, where)
        if found is not None and found[0] == where.raw_url:
            names.append(found[1])
    raw_mirror = next(local for local, url in where.mirrors if url == where.raw_url)
    return objstore.put_content(where.raw_url, raw_mirror, sorted(set(names)))


def _same_machine(where: ObjectLocations) -> bool:
    """Whether this process sees the flow's mirrors as its own (same cache folder)."""
    return all(objstore.mirror(url) == Path(local) for local, url in where.mirrors)


def shard_staging(staging: str, where: ObjectLocations) -> str:
    """Where this shard writes its parts: the flow's staging folder on the flow's own machine,
    else a folder of this machine's mirror of the output."""
    if _same_machine(where) or where.out_url is None:
        return staging
    return str(objstore.mirror(where.out_url) / "_shards" / where.run_id / FACES_PREFIX)


def upload_parts(result: ShardResult, staging: str, where: ObjectLocations) -> ShardResult:
    """Upload the shard's parts under the run's prefix; the result then names them by URL."""
    assert where.out_url is not None
    paths = [Path(path) for path in result.files]
    entries = objstore.upload(where.out_url, where.run_id, Path(staging), paths, under=FACES_PREFIX)
    return replace(result, files=[f"{where.out_url.rstrip('/')}/{e.key}" for e in entries.values()])


def gather_parts(result: ShardResult, staging: str, where: ObjectLocations) -> None:
    """Bring the parts a shard uploaded into the flow's staging folder (the summary reads them)."""
    prefix = f"{where.out_url.rstrip('/')}/{objstore.RUNS}/{where.run_id}/{FACES_PREFIX}/" if where.out_url else ""
    for name in result.files:
        if not prefix or not name.startswith(prefix):
            continue
        target = Path(staging) / name[len(prefix) :]
        if not target.is_file():
            objstore.download_file(name, target)
