"""params.yaml section train as ``TrainSettings`` and ``TrainPaths``."""

from __future__ import annotations

from typing import Any

from faces_core import objstore
from faces_core.train.settings import AugmentSettings, HeadsSettings, TrainPaths, TrainSettings
from flows.params import _build, load_params


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
    remote = tuple((k, v) for k, v in values.items() if k in REMOTE_OK and objstore.is_remote(v))
    refused = [f"train.{k}" for k, v in values.items() if k not in REMOTE_OK and objstore.is_remote(v)]
    if refused:
        raise ValueError(
            f"{', '.join(refused)} must be local files (DVC tracks them); only data_dir, model_dir "
            "and checkpoint_dir may be URLs"
        )
    return data_dir, TrainPaths(**{k: objstore.local(v) for k, v in values.items()}, remote=remote)


REMOTE_OK = ("model_dir", "checkpoint_dir")
"""Path keys that may be URLs (``data_dir`` may too: the train task fetches it)."""
