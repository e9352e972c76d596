"""Read params.yaml into the typed settings of faces_core, one stage per module.

faces_core never reads files of configuration: the flows load params.yaml here and pass
frozen dataclasses down, so every stage sees the same numbers DVC tracks. Each stage's
loader is its own module (``flows.params.ingest``, ``.train``, ``.evaluate``, ``.annotate``)
importing only that stage's settings: a stage's DVC code deps (its imports) then stay its
own, and editing the annotate settings does not rerun ingest and training. This package
itself imports no stage; the old names (``flows.params.ingest_settings`` ...) still resolve,
lazily, for scripts written against them.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

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


_MOVED = {
    "ingest_settings": "ingest",
    "ingest_inputs": "ingest",
    "train_settings": "train",
    "train_paths": "train",
    "TRAIN_PATH_KEYS": "train",
    "evaluate_config": "evaluate",
    "predict_config": "evaluate",
    "EVALUATE_PATH_KEYS": "evaluate",
    "annotate_config": "annotate",
    "ANNOTATE_PATH_KEYS": "annotate",
}


def __getattr__(name: str) -> Any:
    """``flows.params.<loader>`` from the stage module that now holds it (imported on first use)."""
    if name in _MOVED:
        return getattr(importlib.import_module(f"flows.params.{_MOVED[name]}"), name)
    raise AttributeError(f"module 'flows.params' has no attribute {name!r}")
