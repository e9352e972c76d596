"""The in-the-wild check: score annotate's detections and attributes against hand-labelled photos.

Ingest-split evaluation scores the attribute model on crops cut from the dataset's own boxes;
it cannot show what the detector misses, what it finds that is no face, or how the heads do
on faces cropped from the detector's boxes in ordinary photos. This module takes the rows
``faces annotate`` wrote for a folder of photos and a labels file of boxes drawn by eye, and
says how many labelled faces were found, missed and which detections were extra, then scores
each attribute on the matched faces.

Labels file (JSON)::

    {"faces": [{"file": "img10.jpg", "box_xyxy": [90.4, 89.4, 300.4, 389.3], "is_face": true,
                "gender": "female", "age_stage": "middle", "expression": "unsure"}, ...]}

``file`` is relative to the photos folder; ``box_xyxy`` is in pixels of the EXIF-upright image
(as annotate's ``x0 y0 x1 y1``); attribute values come from :data:`faces_core.taxonomy.ATTRIBUTES`,
and ``unsure`` (or no key) leaves that face out of that attribute's scores. ``is_face: false``
marks a box that is not a face: a detection on it is an extra, not a match. Top-level keys
starting with ``_`` (``_about``) are notes and ignored.

Only files named in the labels are scored: a photo without labels says nothing about what
its detections should be. Pure functions, no Prefect and no stage package: the flow reads the
annotations and hands their rows here.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from faces_core.taxonomy import ATTRIBUTES

UNSURE: Final = "unsure"
"""Label value meaning the labeller could not tell: the face is left out of that attribute."""

DEFAULT_IOU: Final = 0.4
"""Hand-drawn boxes and MTCNN's boxes frame a face differently (forehead, chin), so 0.5 would
count well-found faces as missed; 0.4 still keeps a box on a neighbour's face from matching."""

ONE_CLASS_SHARE: Final = 0.8
"""A head giving one class to more than this share of faces is flagged: it may have learned
nothing but the majority of its training data."""

LABELLED_ATTRIBUTES: Final = tuple(name for name in ATTRIBUTES if name != "is_face")
"""Attributes a labels entry may carry (``is_face`` is the entry's own boolean)."""

_ENTRY_KEYS: Final = frozenset({"file", "box_xyxy", "is_face", *LABELLED_ATTRIBUTES})

Box = tuple[float, float, float, float]


class LabelsError(ValueError):
    """The labels file cannot be used; the message names the file, the entry and what to fix."""


@dataclass(frozen=True, slots=True)
class LabelledBox:
    """One box drawn by eye.

    Attributes:
        file: Path relative to the photos folder, ``/``-separated and normalised.
        box: ``(x0, y0, x1, y1)`` in pixels of the upright image.
        is_face: False for a box that marks something that is not a face.
        labels: Attribute -> class; ``unsure`` and missing attributes are left out.
        index: Position of the entry in the labels file (for messages and reports).
    """

    file: str
    box: Box
    is_face: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    index: int = 0


@dataclass(frozen=True, slots=True)
class Detection:
    """One face found by annotate, with its predicted attributes.

    Attributes:
        file: Path relative to the photos folder, ``/``-separated.
        box: ``(x0, y0, x1, y1)`` in pixels of the upright image.
        confidence: Detector score.
        predictions: Attribute -> predicted class, or None where the model gave none (no
            head, or a head that withholds its answer): counted as ``not_predicted``.
    """

    file: str
    box: Box
    confidence: float = 1.0
    predictions: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Matching:
    """Detections paired with labelled boxes.

    Attributes:
        matched: (detection, labelled face, IoU) for detections on an ``is_face`` box.
        missed: Labelled faces no detection matched.
        extra: Detections on no labelled box.
        not_face: (detection, box, IoU) for detections on an ``is_face: false`` box: extras too.
    """

    matched: list[tuple[Detection, LabelledBox, float]]
    missed: list[LabelledBox]
    extra: list[Detection]
    not_face: list[tuple[Detection, LabelledBox, float]]


# --- labels file ---------------------------------------------------------------------------------


def read_labels(path: str | os.PathLike[str]) -> list[LabelledBox]:
    """Read and check a labels file.

    Raises:
        LabelsError: The file is missing, not JSON, or an entry is malformed (every bad entry
            is named, with what to fix).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LabelsError(f"labels file {path} not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsError(f"labels file {path} is not readable JSON: {exc}") from exc
    return parse_labels(data, str(path))


def parse_labels(data: Any, source: str = "labels") -> list[LabelledBox]:
    """Check parsed labels JSON and turn it into boxes.

    Args:
        data: The parsed JSON (an object with a ``faces`` list).
        source: Name of the file, for messages.

    Returns:
        One box per entry, in file order.

    Raises:
        LabelsError: Listing every problem found (up to 20), each with its entry number.
    """
    if not isinstance(data, dict) or not isinstance(data.get("faces"), list):
        raise LabelsError(f'{source}: expected a JSON object with a "faces" list of entries')
    unknown = sorted(k for k in data if k != "faces" and not str(k).startswith("_"))
    problems = (
        [f'unknown top-level key(s) {unknown}: only "faces" (and notes named "_...") are read'] if unknown else []
    )
    boxes: list[LabelledBox] = []
    for index, entry in enumerate(data["faces"]):
        found = _entry_problems(entry)
        if found:
            problems += [f"faces[{index}]: {p}" for p in found]
            continue
        x0, y0, x1, y1 = (float(v) for v in entry["box_xyxy"])
        labels = {
            name: entry[name] for name in LABELLED_ATTRIBUTES if entry.get(name) is not None and entry[name] != UNSURE
        }
        boxes.append(
            LabelledBox(_normal_file(entry["file"]), (x0, y0, x1, y1), entry.get("is_face", True), labels, index)
        )
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise LabelsError(f"{source}: {len(problems)} problem(s) to fix:\n  {shown}")
    return boxes


def _entry_problems(entry: Any) -> list[str]:
    """What is wrong with one labels entry (empty when it is fine)."""
    if not isinstance(entry, dict):
        return ["expected an object with file, box_xyxy, is_face and attributes"]
    problems = []
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        problems.append(
            f"unknown key(s) {unknown}: allowed are file, box_xyxy, is_face, {', '.join(LABELLED_ATTRIBUTES)}"
        )
    file = entry.get("file")
    if not isinstance(file, str) or not file.strip():
        problems.append('"file" must be a path relative to the photos folder, e.g. "img10.jpg"')
    elif _normal_file(file).startswith("../") or posixpath.isabs(file.replace("\\", "/")) or _normal_file(file) == "..":
        problems.append(f'"file" {file!r} must lie inside the photos folder (relative, no "..")')
    problems += _box_problems(entry.get("box_xyxy"))
    if "is_face" in entry and not isinstance(entry["is_face"], bool):
        problems.append(f'"is_face" must be true or false, got {entry["is_face"]!r}')
    for name in LABELLED_ATTRIBUTES:
        value = entry.get(name)
        if value is not None and value != UNSURE and value not in ATTRIBUTES[name]:
            problems.append(f'"{name}" {value!r} is not one of {"|".join((*ATTRIBUTES[name], UNSURE))}')
    return problems


def _box_problems(box: Any) -> list[str]:
    """What is wrong with a ``box_xyxy`` value (empty when it is fine)."""
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        return [f'"box_xyxy" must be 4 numbers [x0, y0, x1, y1] in pixels, got {box!r}']
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(abs(v) < 1e9 for v in (x0, y0, x1, y1)) or not (x0 < x1 and y0 < y1):
        return [f'"box_xyxy" {box!r} must have x0 < x1 and y0 < y1 (finite pixel coordinates)']
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normal_file(file: str) -> str:
    """``a\\b/./c.jpg`` -> ``a/b/c.jpg``: labels and annotations name a file the same way."""
    return posixpath.normpath(file.replace("\\", "/"))


def missing_files(labels: Iterable[LabelledBox], photos: str | os.PathLike[str]) -> list[str]:
    """Labelled files that are not regular files under ``photos`` (checked before annotating)."""
    root = Path(photos)
    return sorted({b.file for b in labels if not (root / b.file).is_file()})


# --- annotations ---------------------------------------------------------------------------------


def detections_from_rows(rows: Iterable[Mapping[str, Any]], photos: str | os.PathLike[str]) -> list[Detection]:
    """Detections from annotation rows (``faces_core.annotate.store.ANNOTATION_SCHEMA``).

    Args:
        rows: Rows with ``file`` (absolute path, as annotate writes it), ``x0 y0 x1 y1``
            (pixels of the upright image), ``confidence`` and one column per attribute.
        photos: The folder that was annotated: ``file`` is made relative to it.

    Returns:
        One detection per row; a null attribute column becomes a None prediction.
    """
    detections = []
    for row in rows:
        predictions = {name: row.get(name) for name in LABELLED_ATTRIBUTES}
        box = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
        file = relative_file(str(row["file"]), photos)
        detections.append(Detection(file, box, float(row.get("confidence") or 0.0), predictions))
    return detections


def relative_file(path: str, photos: str | os.PathLike[str]) -> str:
    """Annotate's ``file`` (absolute, links not resolved) as the labels name it: relative to ``photos``."""
    relative = os.path.relpath(path, os.path.abspath(photos)) if os.path.isabs(path) else path
    return _normal_file(relative)


# --- matching ------------------------------------------------------------------------------------


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_pairs(
    detected: Sequence[Sequence[float]], labelled: Sequence[Sequence[float]], threshold: float = DEFAULT_IOU
) -> list[tuple[int, int, float]]:
    """One-to-one pairs of boxes, highest IoU first, each at least ``threshold``.

    Greedy rather than optimal assignment: with faces that rarely overlap the two agree, and
    greedy is what a reader checking a photo by eye would do.

    Returns:
        ``(detected index, labelled index, IoU)`` in the order they were taken.
    """
    candidates = sorted(
        ((iou(d, lab), i, j) for i, d in enumerate(detected) for j, lab in enumerate(labelled)),
        key=lambda c: (-c[0], c[1], c[2]),
    )
    used_d: set[int] = set()
    used_l: set[int] = set()
    pairs = []
    for value, i, j in candidates:
        if value < threshold or value <= 0:
            break
        if i in used_d or j in used_l:
            continue
        used_d.add(i)
        used_l.add(j)
        pairs.append((i, j, value))
    return pairs


def match(detections: Sequence[Detection], labels: Sequence[LabelledBox], threshold: float = DEFAULT_IOU) -> Matching:
    """Pair detections with labelled boxes file by file (only files that have labels).

    ``is_face: false`` boxes take part in the matching, so a detection on one is paired with
    it (and counted as an extra) instead of being free to match a nearby face.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {threshold}")
    by_file: dict[str, list[LabelledBox]] = {}
    for box in labels:
        by_file.setdefault(box.file, []).append(box)
    found: dict[str, list[Detection]] = {}
    for det in detections:
        if det.file in by_file:
            found.setdefault(det.file, []).append(det)
    result = Matching([], [], [], [])
    for file, boxes in by_file.items():
        dets = found.get(file, [])
        pairs = greedy_pairs([d.box for d in dets], [b.box for b in boxes], threshold)
        taken_d = {i for i, _, _ in pairs}
        taken_l = {j for _, j, _ in pairs}
        for i, j, value in pairs:
            (result.matched if boxes[j].is_face else result.not_face).append((dets[i], boxes[j], value))
        result.missed.extend(b for j, b in enumerate(boxes) if j not in taken_l and b.is_face)
        result.extra.extend(d for i, d in enumerate(dets) if i not in taken_d)
    return result


# --- scores --------------------------------------------------------------------------------------


def score_attribute(pairs: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
    """Scores of one attribute over (labelled class, predicted class or None) of matched faces.

    A None prediction is ``not_predicted``, not wrong: a head the model lacks or withholds
    says nothing about whether the model would be right.

    Returns:
        ``labelled`` (faces with a label), ``n`` (of those, predicted), ``not_predicted``,
        ``accuracy``, ``macro_f1`` (mean F1 over the classes present in the labels),
        ``recall`` per labelled class, ``confusion`` (true -> predicted -> count),
        ``top_class`` and ``top_class_share`` (the most predicted class and its share) and
        ``one_class`` (that share above :data:`ONE_CLASS_SHARE`). Scores are None when ``n`` is 0.
    """
    scored = [(t, p) for t, p in pairs if p is not None]
    n = len(scored)
    report: dict[str, Any] = {
        "labelled": len(pairs),
        "n": n,
        "not_predicted": len(pairs) - n,
        "accuracy": None,
        "macro_f1": None,
        "recall": {},
        "confusion": {},
        "top_class": None,
        "top_class_share": None,
        "one_class": False,
    }
    if n == 0:
        return report
    confusion: dict[str, dict[str, int]] = {}
    for true, pred in scored:
        row = confusion.setdefault(true, {})
        row[pred] = row.get(pred, 0) + 1
    classes = sorted(confusion)
    predicted = Counter(p for _, p in scored)
    recall = {c: confusion[c].get(c, 0) / sum(confusion[c].values()) for c in classes}
    f1s = []
    for c in classes:
        tp = confusion[c].get(c, 0)
        precision = tp / predicted[c] if predicted[c] else 0.0
        f1s.append(2 * precision * recall[c] / (precision + recall[c]) if precision + recall[c] > 0 else 0.0)
    top, top_n = max(predicted.items(), key=lambda kv: (kv[1], kv[0]))
    report.update(
        accuracy=sum(t == p for t, p in scored) / n,
        macro_f1=sum(f1s) / len(f1s),
        recall=recall,
        confusion={c: dict(sorted(confusion[c].items())) for c in classes},
        top_class=top,
        top_class_share=top_n / n,
        one_class=top_n / n > ONE_CLASS_SHARE,
    )
    return report


def score_photos(
    detections: Sequence[Detection], labels: Sequence[LabelledBox], threshold: float = DEFAULT_IOU
) -> dict[str, Any]:
    """The whole report: detection counts, per-attribute scores and the lists behind the counts.

    Args:
        detections: Every face annotate found in the photos folder.
        labels: The labelled boxes.
        threshold: Least IoU for a detection and a labelled box to match.

    Returns:
        ``iou_threshold``, ``files`` (labelled files), ``detection`` (``labelled_faces``,
        ``non_face_boxes``, ``detections`` in labelled files, ``matched``, ``missed``, ``extra``
        and of those ``extra_on_non_face``, ``mean_iou``), ``attributes`` (per attribute that
        any entry labels: :func:`score_attribute`), ``missed`` and ``extra`` (file and box of
        each, so they can be looked at).
    """
    result = match(detections, labels, threshold)
    files = {b.file for b in labels}
    in_files = sum(1 for d in detections if d.file in files)
    used = [name for name in LABELLED_ATTRIBUTES if any(name in b.labels for b in labels)]
    attributes = {
        name: score_attribute(
            [(box.labels[name], det.predictions.get(name)) for det, box, _ in result.matched if name in box.labels]
        )
        for name in used
    }
    extras = [
        {"file": d.file, "box_xyxy": _round(d.box), "confidence": round(d.confidence, 4), "on": None}
        for d in result.extra
    ]
    extras += [
        {"file": d.file, "box_xyxy": _round(d.box), "confidence": round(d.confidence, 4), "on": f"faces[{b.index}]"}
        for d, b, _ in result.not_face
    ]
    ious = [v for _, _, v in result.matched]
    return {
        "iou_threshold": threshold,
        "files": len(files),
        "detection": {
            "labelled_faces": sum(1 for b in labels if b.is_face),
            "non_face_boxes": sum(1 for b in labels if not b.is_face),
            "detections": in_files,
            "matched": len(result.matched),
            "missed": len(result.missed),
            "extra": len(result.extra) + len(result.not_face),
            "extra_on_non_face": len(result.not_face),
            "mean_iou": round(sum(ious) / len(ious), 4) if ious else None,
        },
        "attributes": attributes,
        "missed": [{"file": b.file, "box_xyxy": list(b.box), "entry": b.index} for b in result.missed],
        "extra": sorted(extras, key=lambda e: (e["file"], e["box_xyxy"])),
    }


def _round(box: Box) -> list[float]:
    return [round(v, 1) for v in box]


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a table for the terminal: one line per attribute, then the counts."""
    det = report["detection"]
    lines = [
        f"{det['matched']} of {det['labelled_faces']} labelled faces found in {report['files']} photos "
        f"(IoU >= {report['iou_threshold']}): {det['missed']} missed, {det['extra']} extra detections "
        f"({det['extra_on_non_face']} on boxes marked not a face)",
        "",
        f"{'attribute':<12} {'n':>4} {'acc':>6} {'macroF1':>8} {'top class (share)':<22} per-class recall",
    ]
    for name, score in report["attributes"].items():
        if score["n"] == 0:
            why = (
                f"not_predicted ({score['not_predicted']} labelled)"
                if score["labelled"]
                else "no labelled face matched"
            )
            lines.append(f"{name:<12} {0:>4} {'-':>6} {'-':>8} {why}")
            continue
        top = f"{score['top_class']} ({score['top_class_share']:.0%}){' !' if score['one_class'] else ''}"
        recall = " ".join(f"{c}={r:.2f}" for c, r in score["recall"].items())
        extra = f", {score['not_predicted']} not predicted" if score["not_predicted"] else ""
        lines.append(
            f"{name:<12} {score['n']:>4} {score['accuracy']:>6.3f} {score['macro_f1']:>8.3f} {top:<22} {recall}{extra}"
        )
    if any(s["one_class"] for s in report["attributes"].values()):
        lines.append(f"! one class given to more than {ONE_CLASS_SHARE:.0%} of the faces")
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report as indented JSON (parent folders created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return target
