"""The detector and the attribute model of an annotate run, loaded once per process.

:func:`detector_id` and :func:`model_version` name what made a row (a file annotated with
the same content, model version and detector is skipped); :func:`load_engine` gives the
process's :class:`Engine` for a model and settings, shared by its shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from faces_core.annotate.settings import AnnotateSettings
from faces_core.inference.detect import DetectSettings, FaceDetector

log = logging.getLogger(__name__)

NO_MODEL: Final = "none"
"""``model_version`` of rows annotated without an attribute model (detection only)."""


def detector_id(settings: DetectSettings) -> str:
    """Short hash of the settings that change detections (not device or batch size)."""
    values = {k: v for k, v in asdict(settings).items() if k not in ("device", "batch_size")}
    return "mtcnn-" + hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def model_version(model_dir: str | os.PathLike[str] | None, all_heads: bool = False) -> str:
    """``version`` from ``model_dir/model.json``, or :data:`NO_MODEL` when there is no model.

    With ``all_heads`` on a model that withholds heads, the version gains ``+all-heads``: the
    rows differ (the withheld columns are filled), so files annotated without it are redone.
    """
    if model_dir is None:
        return NO_MODEL
    from faces_core.inference.model import META_FILE, MODEL_FILE, read_meta

    directory = Path(model_dir)
    if not (directory / META_FILE).exists() or not (directory / MODEL_FILE).exists():
        return NO_MODEL
    meta = read_meta(directory / META_FILE)  # a broken model.json: ModelLoadError, one line
    version = meta.version or hashlib.sha256((directory / META_FILE).read_bytes()).hexdigest()[:12]
    if all_heads and len(meta.published()) < len(meta.attributes):
        version += "+all-heads"
    return version


class Engine:
    """The detector and, when a trained model exists, the attribute predictor, loaded once.

    Arguments:
        model_dir: Directory of ``model.pt`` + ``model.json``; None or a folder without a
            model gives detection only (logged once).
        settings: Run settings (detector, device, batch sizes).
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None, settings: AnnotateSettings) -> None:
        self.detector = FaceDetector(settings.detect)
        self.detector_id = detector_id(settings.detect)
        self.model_version = model_version(model_dir, settings.all_heads)
        self.predictor: Any = None
        if self.model_version == NO_MODEL:
            log.warning(
                "no trained model in %s: detecting faces only (attribute columns stay empty); "
                "train one with `faces train` or pass --model DIR",
                model_dir,
            )
        else:
            from faces_core.inference.predict import Predictor

            device = "cpu" if self.detector.device.type == "cpu" else "cuda"
            self.predictor = Predictor(
                model_dir or "",
                device=device,
                batch_size=settings.predict_batch_size,
                all_heads=settings.all_heads,
                max_model_bytes=settings.max_model_bytes,
            )
            log.info("attributes from model %s (version %s)", model_dir, self.model_version)
        self.lock = threading.Lock()


_ENGINES: dict[tuple[str, str, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def load_engine(model_dir: str | os.PathLike[str] | None, settings: AnnotateSettings) -> Engine:
    """The :class:`Engine` for these settings, loaded once per process (shards share it)."""
    key = (
        str(Path(model_dir).absolute()) if model_dir else "",
        model_version(model_dir, settings.all_heads),
        repr(settings),
    )
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = Engine(model_dir, settings)
        return _ENGINES[key]
