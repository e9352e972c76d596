"""Annotate shards that share no disk with the flow: inputs, model and output in object storage.

A shard task may run on a Dask worker with a disk of its own. When a run's files, model or
output are object-store URLs (:mod:`faces_core.objstore`), the shard, wherever it runs:

1. fetches each of its files (named by URL) and the model into its own machine's mirror;
2. annotates into its own mirror of the output, committing its parts as always;
3. uploads those parts under ``<out>/_runs/<run_id>/`` and writes ``_entries/<shard>.json``
   beside them, listing each part's key, size and SHA-256.

The flow then commits the run with :func:`commit_run`: the previous manifest plus every
shard's entries, written last, so a shard lost with its worker leaves nothing half-visible,
and its files, never marked done, are annotated by the next run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from faces_core import objstore
from faces_core.annotate import store
from faces_core.annotate.inputs import FileJob, find_files
from faces_core.annotate.shard import ShardReport, ShardRun, run_shard

ENTRIES = "_entries"


def object_jobs(location: str) -> list[FileJob]:
    """The objects under a folder URL as jobs named by their URL; nothing is downloaded here
    (each shard fetches its own files), so listing a large bucket costs one listing."""
    url = location.rstrip("/")
    local_root = objstore.mirror(url)
    return [
        FileJob(str(local_root / rel), str(local_root), name=f"{url}/{rel}") for rel, _, _ in objstore.objects(location)
    ]


def files_to_annotate(inputs: Sequence[str], out: str) -> list[FileJob]:
    """The files of every input: walked when local, listed when an object-store URL (named by
    their URL in the outputs and fetched by the shard that reads them)."""
    jobs: list[FileJob] = []
    for given in inputs:
        jobs += object_jobs(given) if objstore.is_object_url(given) else find_files([given], exclude=[out])
    return jobs


def localise(run: ShardRun, jobs: Sequence[FileJob]) -> tuple[ShardRun, list[FileJob]]:
    """This machine's copies: the model and the shard's objects fetched into this process's
    mirrors, the output swapped for this machine's mirror of it."""
    if run.model_url is not None:
        run = replace(run, model_dir=str(objstore.fetch(run.model_url)))
    if run.out_url is not None:
        out = objstore.mirror(run.out_url)
        draw = str(out / Path(run.draw_dir).name) if run.draw_dir is not None else None
        run = replace(run, out=str(out), draw_dir=draw)
    local: list[FileJob] = []
    for job in jobs:
        if job.name is None or not objstore.is_object_url(job.name) or job.rejection is not None:
            local.append(job)
            continue
        target = objstore.mirror(job.name)
        objstore.download_file(job.name, target)
        local.append(replace(job, path=str(target), root=str(target.parent)))
    return run, local


def run_shard_anywhere(run: ShardRun, index: int, jobs: Sequence[FileJob], done: dict[str, set[str]]) -> ShardReport:
    """:func:`~faces_core.annotate.shard.run_shard` on any machine: with object-store locations,
    fetch what the shard reads first and upload what it wrote after (its parts are committed
    locally as always before they are uploaded)."""
    remote = run.out_url is not None or run.model_url is not None
    if not remote and not any(j.name is not None and objstore.is_object_url(j.name) for j in jobs):
        return run_shard(run, index, jobs, done)
    run, jobs = localise(run, jobs)
    report = run_shard(run, index, jobs, done)
    if run.out_url is not None:
        upload_shard(run, index)
    return report


def upload_shard(run: ShardRun, index: int) -> int:
    """Upload shard ``index``'s parts to the run's prefix, then its entries file.

    Returns:
        The number of files uploaded.
    """
    assert run.out_url is not None
    name = store.part_name(run.run_id, index)
    local = [Path(run.out) / folder / name for folder in (store.ANNOTATIONS_DIR, store.FILES_DIR, store.ERRORS_DIR)]
    entries = objstore.upload(run.out_url, run.run_id, Path(run.out), [p for p in local if p.is_file()])
    fs, base = objstore.filesystem(run.out_url)
    listing = {rel: asdict(entry) for rel, entry in entries.items()}
    fs.pipe_file(
        f"{base}/{objstore.RUNS}/{run.run_id}/{ENTRIES}/{index:05d}.json", json.dumps(listing, sort_keys=True).encode()
    )
    return len(entries)


def commit_run(location: str, run_id: str) -> objstore.Manifest:
    """Commit a run whose shards uploaded their parts: the previous manifest plus every shard's
    entries, written last (a run with no shard output still commits, unchanged)."""
    fs, base = objstore.filesystem(location)
    fs.invalidate_cache()  # the shards wrote from other processes
    previous = objstore.read_manifest(location)
    files = dict(previous.files) if previous else {}
    entries_dir = f"{base}/{objstore.RUNS}/{run_id}/{ENTRIES}"
    try:
        listed = sorted(fs.find(entries_dir))
    except FileNotFoundError:
        listed = []
    for key in listed:
        for rel, e in json.loads(fs.cat_file(key)).items():
            files[rel] = objstore.Entry(str(e["key"]), int(e["size"]), str(e["sha256"]))
    manifest = objstore.Manifest(run_id, files)
    fs.pipe_file(f"{base}/{objstore.MANIFEST}", manifest.to_json())
    return manifest
