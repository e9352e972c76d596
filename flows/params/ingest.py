"""params.yaml sections ingest, download, validate and partition as ``IngestSettings``."""

from __future__ import annotations

from typing import Any

from faces_core.download import DownloadSettings
from faces_core.ingest.partition import PartitionSettings
from faces_core.ingest.pipeline import IngestSettings
from faces_core.splits import SplitFractions
from faces_core.validate import ValidateSettings
from flows.params import _build, load_params


def ingest_settings(params: dict[str, Any] | None = None, **overrides: Any) -> IngestSettings:
    """IngestSettings from params.yaml sections ingest/download/validate/partition.

    ``overrides`` replace ingest-level keys (raw_dir, out_dir, shard_size, workers, max_line_bytes,
    lock_wait_s) and
    ``concurrency``/``proxy``/``host_proxies`` (``{"http://host": proxy_url}``) of the download
    section; None values are ignored.
    """
    params = load_params() if params is None else params
    ingest = {
        k: v
        for k, v in (params.get("ingest") or {}).items()
        if k
        in (
            "raw_dir",
            "out_dir",
            "shard_size",
            "chunk_images",
            "workers",
            "max_line_bytes",
            "max_tcs_bytes",
            "max_annotation_bytes",
            "max_crop_bytes",
            "lock_wait_s",
        )
    }
    download = dict(params.get("download") or {})
    concurrency = overrides.pop("concurrency", None)
    if concurrency is not None:
        download["concurrency"] = concurrency
    proxy = overrides.pop("proxy", None)
    host_proxies = overrides.pop("host_proxies", None)
    if proxy or host_proxies:
        # requests picks the most specific key: "http://host" (a host routed on its own, as
        # the bundled sample's) before "http" (the user's proxy), before the environment's.
        download["proxies"] = {**({"http": proxy, "https": proxy} if proxy else {}), **(host_proxies or {})}
    partition = dict(params.get("partition") or {})
    if "split" in partition:
        partition["split"] = _build(SplitFractions, partition["split"], "partition.split")
    if "bucket_edges" in partition:
        partition["bucket_edges"] = tuple(partition["bucket_edges"])
    ingest.update({k: v for k, v in overrides.items() if v is not None})
    return IngestSettings(
        **ingest,
        download=_build(DownloadSettings, download, "download"),
        validate=_build(ValidateSettings, params.get("validate"), "validate"),
        partition=_build(PartitionSettings, partition, "partition"),
    )


def ingest_inputs(
    params: dict[str, Any] | None = None, tcs: str | None = None, imfdb_root: str | None = None
) -> dict[str, str | None]:
    """Inputs (tcs, imfdb_root) of the ingest flow: the given ones, else params.yaml's.

    None means "use params.yaml"; "" is kept and means "skip this source".
    """
    params = load_params() if params is None else params
    section = params.get("ingest") or {}
    return {
        "tcs": section.get("tcs") if tcs is None else tcs,
        "imfdb_root": section.get("imfdb_root") if imfdb_root is None else imfdb_root,
    }
