"""The ``ingest`` flow: parse TCS and IMFDB, download, validate, partition into Parquet.

Run it as ``python -m flows.ingest``, ``faces ingest`` or, once served,
``prefect deployment run ingest/ingest``. Parameters left at None come from params.yaml.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from faces_core import objstore
from faces_core.ingest import objects
from faces_core.ingest import pipeline as core
from faces_core.ingest.pipeline import IngestSettings
from flows import runner
from flows.params.ingest import ingest_inputs, ingest_settings
from tasks import ingest as t
from tasks import objstore as o


# Threads suffice: downloads wait on the network, shards wait on the process pool.
@flow(
    name="ingest",
    flow_run_name=runner.run_name("ingest"),
    task_runner=runner.flow_task_runner(ThreadPoolTaskRunner(max_workers=8)),  # type: ignore[arg-type]
    log_prints=False,
)
def ingest(
    tcs: str | None = None,
    imfdb_root: str | None = None,
    out_dir: str | None = None,
    raw_dir: str | None = None,
    concurrency: int | None = None,
    shard_size: int | None = None,
    workers: int | None = None,
    proxy: str | None = None,
    host_proxies: dict[str, str] | None = None,
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
        proxy: HTTP(S) proxy for image downloads (else http_proxy/https_proxy apply). Prefer the
            environment for a proxy with a password: a parameter is stored in the Prefect
            database (``faces ingest --proxy`` puts it in the environment itself).
        host_proxies: Proxies for single hosts, ``{"http://host": proxy_url}``, ahead of ``proxy``
            and the environment: the bundled sample's image host goes to its loopback server
            this way whatever proxy the user has.

    Returns:
        The summary written to summary.json.
    """
    inputs = ingest_inputs(tcs=tcs, imfdb_root=imfdb_root)
    tcs, imfdb_root = inputs["tcs"], inputs["imfdb_root"]
    settings = ingest_settings(
        out_dir=out_dir,
        raw_dir=raw_dir,
        shard_size=shard_size,
        workers=workers,
        concurrency=concurrency,
        proxy=proxy,
        host_proxies=host_proxies,
    )
    runner.show_settings("ingest", tcs=tcs, imfdb_root=imfdb_root, settings=settings)
    tcs, imfdb_root, settings, remote = _stage_in(tcs, imfdb_root, settings)
    if not objstore.is_object_url(tcs) or imfdb_root:  # a TCS object is checked by its parse task
        core.check_inputs(None if objstore.is_object_url(tcs) else tcs, imfdb_root)
    if _on_dask():
        # The cluster's workers are the parallelism: a shard runs inside its Dask worker,
        # not in a process pool of its own.
        settings = replace(settings, workers=1)
    # The pipeline itself (lock, recover, parse, download, hash, plan, partition, commit) is
    # core.ingest_run, the one wiring tests and benchmarks run too; here its steps are tasks.
    summary = core.ingest_run(tcs, imfdb_root, settings, t.PrefectSteps())
    if settings.objects is not None and "raw_dir" in remote:  # each chunk's images went up before its shards
        o.publish(settings.raw_dir, remote["raw_dir"], settings.objects.run_id, content_addressed=True)
    if settings.objects is not None and "out_dir" in remote:
        o.publish(settings.out_dir, remote["out_dir"], settings.objects.run_id)  # manifest after every object
    return summary


def _stage_in(
    tcs: str | None, imfdb_root: str | None, settings: IngestSettings
) -> tuple[str | None, str | None, IngestSettings, dict[str, str]]:
    """The IMFDB tree in object storage fetched (its parse and hashing read it here; a TCS file
    there is fetched by the parse task itself); object-store outputs swapped for their local
    mirrors (the image store fetched, so nothing stored is downloaded again), to be published
    once the run has finished. Returns the inputs, settings and {field: URL} to publish."""
    imfdb_url = imfdb_root if objstore.is_object_url(imfdb_root) else None
    if imfdb_url is not None:
        imfdb_root = o.fetch(imfdb_url, str(objstore.mirror(imfdb_url)), committed=False)
    settings, remote = objects.on_mirrors(settings, imfdb_url)
    if "raw_dir" in remote:
        o.fetch(remote["raw_dir"], settings.raw_dir)
    return tcs, imfdb_root, settings, remote


def _on_dask() -> bool:
    """Whether this flow run submits its tasks to a Dask cluster (``--task-runner dask``)."""
    ctx = FlowRunContext.get()
    return ctx is not None and type(ctx.task_runner).__name__ == "DaskTaskRunner"


if __name__ == "__main__":  # the command line lives in faces_cli
    from faces_cli.ingest import command

    raise SystemExit(command())
