"""params.yaml sections evaluate and predict (URL policy from download) as their settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faces_core import objstore
from faces_core.inference.settings import EvaluatePaths, EvaluateSettings, PredictSettings
from flows.params import _build, load_params

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
    given = {k: str(section.pop(k)) for k in EVALUATE_PATH_KEYS if section.get(k) is not None}
    for k in EVALUATE_PATH_KEYS:
        section.pop(k, None)
    remote = tuple((k, v) for k, v in given.items() if objstore.is_remote(v))
    refused = [f"evaluate.{k}" for k, _ in remote if k not in ("model_dir", "data_dir")]
    if refused:
        raise ValueError(
            f"{', '.join(refused)} must be local (DVC tracks them); only model_dir and data_dir may be URLs"
        )
    paths = EvaluatePaths(**{k: objstore.local(v) for k, v in given.items()}, remote=remote)
    return paths, _build(EvaluateSettings, section, "evaluate")


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
