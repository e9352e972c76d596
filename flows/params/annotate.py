"""params.yaml section annotate as ``AnnotateSettings`` (detector and inbox included)."""

from __future__ import annotations

from typing import Any

from faces_core.annotate.settings import AnnotateSettings, DetectSettings, InboxSettings
from flows.params import _build, load_params

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
