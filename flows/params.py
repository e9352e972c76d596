"""Read params.yaml into the typed settings of faces_core.

faces_core never reads files of configuration: the flows load params.yaml here and pass
frozen dataclasses down, so every stage sees the same numbers DVC tracks.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from faces_core.annotate.settings import AnnotateSettings, DetectSettings, InboxSettings
from faces_core.ingest.download import DownloadSettings
from faces_core.ingest.partition import PartitionSettings
from faces_core.ingest.pipeline import IngestSettings
from faces_core.ingest.validate import ValidateSettings
from faces_core.splits import SplitFractions
from faces_core.train.evaluate_settings import EvaluatePaths, EvaluateSettings, PredictSettings
from faces_core.train.settings import AugmentSettings, HeadsSettings, TrainPaths, TrainSettings

DEFAULT_PARAMS = "params.yaml"


def params_path() -> Path:
    """params.yaml of the current project: ``$FACES_PARAMS``, else ./params.yaml."""
    return Path(os.environ.get("FACES_PARAMS", DEFAULT_PARAMS))


def load_params(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Load params.yaml; a missing file gives {} so the code defaults apply."""
    path = Path(path) if path is not None else params_path()
    if not path.exists():
        return {}
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _build(cls: type, section: dict[str, Any] | None, name: str) -> Any:
    section = dict(section or {})
    known = {f.name for f in fields(cls)}
    unknown = set(section) - known
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in params section {name!r}; known: {sorted(known)}")
    return cls(**section)


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


def train_settings(params: dict[str, Any] | None = None, **overrides: Any) -> TrainSettings:
    """TrainSettings from params.yaml ``train`` (paths excluded); non-None overrides win."""
    params = load_params() if params is None else params
    section = {k: v for k, v in (params.get("train") or {}).items() if k not in TRAIN_PATH_KEYS}
    section.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(section.get("augment"), dict):
        section["augment"] = _build(AugmentSettings, section["augment"], "train.augment")
    if isinstance(section.get("heads"), dict):
        heads = dict(section["heads"])
        for key in ("l2", "weighting"):
            if isinstance(heads.get(key), list):
                heads[key] = tuple(heads[key])
        section["heads"] = _build(HeadsSettings, heads, "train.heads")
    return _build(TrainSettings, section, "train")  # type: ignore[no-any-return]


TRAIN_PATH_KEYS = ("data_dir", "model_dir", "metrics_file", "plots_file", "checkpoint_dir")


def train_paths(params: dict[str, Any] | None = None, **overrides: str | None) -> tuple[str, TrainPaths]:
    """(data_dir, TrainPaths) from params.yaml ``train``; non-None overrides win."""
    params = load_params() if params is None else params
    section = params.get("train") or {}
    values: dict[str, str] = {k: str(section[k]) for k in TRAIN_PATH_KEYS if section.get(k) is not None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    data_dir = str(values.pop("data_dir", (params.get("ingest") or {}).get("out_dir", "data/processed")))
    return data_dir, TrainPaths(**{k: Path(v) for k, v in values.items()})


EVALUATE_PATH_KEYS = ("model_dir", "data_dir", "metrics_file", "details_file", "plots_dir")


def evaluate_config(params: dict[str, Any] | None = None, **overrides: Any) -> tuple[EvaluatePaths, EvaluateSettings]:
    """(EvaluatePaths, EvaluateSettings) from params.yaml ``evaluate``; non-None overrides win.

    A missing ``data_dir`` falls back to ``ingest.out_dir`` and a missing ``model_dir`` to
    ``train.model_dir``, so a fresh pipeline evaluates what it just trained. A ``metrics_file``
    override without a ``details_file`` puts the details beside it (``<stem>_details.json``).
    """
    params = load_params() if params is None else params
    section = dict(params.get("evaluate") or {})
    if overrides.get("metrics_file") is not None and overrides.get("details_file") is None:
        # `faces evaluate --out X` writes its details beside X, never over the DVC stage's file
        section.pop("details_file", None)
    section.update({k: v for k, v in overrides.items() if v is not None})
    section.setdefault("data_dir", (params.get("ingest") or {}).get("out_dir", "data/processed"))
    section.setdefault("model_dir", (params.get("train") or {}).get("model_dir", "models"))
    paths = {k: Path(str(section.pop(k))) for k in EVALUATE_PATH_KEYS if section.get(k) is not None}
    for k in EVALUATE_PATH_KEYS:
        section.pop(k, None)
    return EvaluatePaths(**paths), _build(EvaluateSettings, section, "evaluate")


def predict_config(params: dict[str, Any] | None = None, **overrides: Any) -> tuple[Path, PredictSettings]:
    """(model_dir, PredictSettings) from params.yaml ``predict`` (URL policy and deadlines from
    ``download``); non-None overrides win."""
    params = load_params() if params is None else params
    # URL policy and deadlines come from ingest's download section (predict may override them).
    download = params.get("download") or {}
    section = {k: download[k] for k in ("allow_private_hosts", "attempt_timeout_s", "url_timeout_s") if k in download}
    section.update(params.get("predict") or {})
    section.update({k: v for k, v in overrides.items() if v is not None})
    model_dir = section.pop("model_dir", None) or (params.get("train") or {}).get("model_dir", "models")
    return Path(str(model_dir)), _build(PredictSettings, section, "predict")


ANNOTATE_PATH_KEYS = ("inputs", "out", "model_dir")


def annotate_config(
    params: dict[str, Any] | None = None, **overrides: Any
) -> tuple[dict[str, Any], AnnotateSettings, InboxSettings]:
    """Paths, AnnotateSettings and InboxSettings from params.yaml ``annotate``; non-None overrides win.

    Paths are ``inputs`` (list of folders), ``out`` (the DVC annotate stage's output),
    ``adhoc_out`` (every other annotate run's default output) and ``model_dir`` (falls back to
    ``train.model_dir``). ``overrides`` may name any path or top-level annotate key; detector
    keys go in ``annotate.detect``, inbox keys in ``annotate.inbox``.
    """
    params = load_params() if params is None else params
    section = dict(params.get("annotate") or {})
    section.update({k: v for k, v in overrides.items() if v is not None})
    paths: dict[str, Any] = {
        "inputs": [str(p) for p in (section.pop("inputs", None) or [])],
        "out": str(section.pop("out", None) or "data/annotations"),
        "adhoc_out": str(section.pop("adhoc_out", None) or "data/annotated"),
        "model_dir": str(section.pop("model_dir", None) or (params.get("train") or {}).get("model_dir", "models")),
    }
    detect = dict(section.pop("detect", None) or {})
    if "thresholds" in detect:
        detect["thresholds"] = tuple(detect["thresholds"])
    inbox = dict(section.pop("inbox", None) or {})
    if "folders" in inbox:
        inbox["folders"] = tuple(inbox["folders"] or ())
    settings = _build(
        AnnotateSettings, {**section, "detect": _build(DetectSettings, detect, "annotate.detect")}, "annotate"
    )
    return paths, settings, _build(InboxSettings, inbox, "annotate.inbox")
