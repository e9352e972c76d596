"""Score a trained model on any ingest output: per-attribute metrics, breakdowns, confusion matrices.

The model and the data are independent inputs: a user can ingest a new set of actors into
its own directory and score the model on it (``split="all"``), or score the held-out
``test`` split of the training data. Every taxonomy attribute appears in the report with a
status, so nothing silently disappears:

* ``ok``: the model has a head and the data holds at least ``min_labels`` labels; accuracy,
  macro-F1, per-class precision/recall/F1/support and accuracy per size bucket and source;
* ``too_few_labels``: the model has a head but the data holds fewer labels (count given);
  metrics on a handful of faces would only be noise;
* ``no_head``: the model was trained without this attribute (count of labels given).

Outputs: ``eval.json`` (DVC metrics) and ``<attribute>.png`` / ``<attribute>.csv`` confusion
matrices (rows = true class, columns = predicted class) for every ``ok`` attribute.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from faces_core.files import write_atomic
from faces_core.inference.device import resolve_device
from faces_core.inference.model import (
    FACE_TRUNK,
    META_FILE,
    MODEL_FILE,
    ModelMeta,
    load_model,
    tuned_network,
    uses_agegender,
    uses_detector_boxes,
    uses_expression,
    uses_flip,
)
from faces_core.inference.settings import SPLITS, EvaluateInputError, EvaluatePaths, EvaluateSettings
from faces_core.storage import read_faces
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.dataset import IGNORE_INDEX, FaceDataset, FaceTable, dataset_version, load_face_table
from faces_core.train.metrics import confusion_matrix, expected_calibration_error, head_report, macro_f1, majority_floor
from faces_core.train.workers import drop_inherited_thread_atexits

log = logging.getLogger(__name__)

STATUS_OK: Final = "ok"
STATUS_TOO_FEW: Final = "too_few_labels"
STATUS_NO_HEAD: Final = "no_head"


def check_inputs(paths: EvaluatePaths, split: str) -> int:
    """Fail early, with what to do, when the model, data or split is unusable.

    Returns:
        Number of faces in the split.

    Raises:
        EvaluateInputError: missing model files, no dataset, unknown or empty split.
    """
    missing = [p for p in (paths.model_dir / MODEL_FILE, paths.model_dir / META_FILE) if not p.is_file()]
    if missing:
        raise EvaluateInputError(
            f"{', '.join(map(str, missing))} not found: train a model first (`faces train`) or pass --model DIR"
        )
    if split not in SPLITS:
        raise EvaluateInputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    try:
        splits = Counter(read_faces(paths.data_dir).to_table(columns=["split"]).column("split").to_pylist())
    except FileNotFoundError as exc:
        raise EvaluateInputError(f"{exc} (or pass --data DIR, an ingest output directory)") from exc
    faces = sum(splits.values()) if split == "all" else splits.get(split, 0)
    if faces == 0:
        present = ", ".join(f"{s}={n}" for s, n in sorted(splits.items())) or "none"
        raise EvaluateInputError(
            f"no faces in split {split!r} of {paths.data_dir} (faces per split: {present}): "
            "choose another --split (all = every face) or ingest more data"
        )
    return faces


@torch.inference_mode()
def predict_table(
    model: nn.Module,
    table: FaceTable,
    input_size: int,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    confidences: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Predicted class (index into the head's class list) of every face for every head.

    Crops are decoded and resized by :class:`FaceDataset` without augmentation, batched by a
    DataLoader in table order, and run on ``device`` (bf16 autocast and channels_last on CUDA).

    Args:
        confidences: When given, filled with head -> float ``[N]`` softmax probability of the
            predicted class (for calibration error).

    Returns:
        head -> int64 ``[N]`` in table order.
    """
    model.eval()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loader: DataLoader[Any] = DataLoader(
        FaceDataset(table, input_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
        worker_init_fn=drop_inherited_thread_atexits,
    )
    heads = list(getattr(model, "heads", {}))
    chunks: dict[str, list[np.ndarray]] = {head: [] for head in heads}
    confidence_chunks: dict[str, list[np.ndarray]] = {head: [] for head in heads}
    for images, _ in loader:
        x = images.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        for head in heads:
            top = logits[head].float().softmax(dim=1).max(dim=1)
            chunks[head].append(top.indices.cpu().numpy())
            confidence_chunks[head].append(top.values.cpu().numpy())
    if confidences is not None:
        confidences.update(
            {h: np.concatenate(p) if p else np.zeros(0, np.float32) for h, p in confidence_chunks.items()}
        )
    return {head: np.concatenate(parts) if parts else np.zeros(0, np.int64) for head, parts in chunks.items()}


@torch.inference_mode()
def predict_embedded(
    model: nn.Module,
    meta: ModelMeta,
    table: FaceTable,
    workers: int = 0,
    confidences: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`predict_table` for the face-trunk recipe: descriptors through the one crop path,
    then the calibrated heads (every head, published or not: evaluation scores them all)."""
    from faces_core.train.descriptors import embed_table

    flip, expression = uses_flip(meta), uses_expression(meta)
    tuned = tuned_network(model, meta)  # expression_head: tuned: its logits end the descriptor
    if uses_detector_boxes(meta):  # read each crop as training did: the detector's box in it
        from faces_core.train.boxes import detector_boxes, with_boxes

        table = with_boxes(table, detector_boxes(table, None))
    descriptors = embed_table(
        table, None, flip=flip, workers=workers, expression=expression, tuned=tuned, agegender=uses_agegender(meta)
    )
    x = torch.from_numpy(descriptors)
    logits = model(x) if len(table) else {h: torch.zeros(0, len(c)) for h, c in meta.attributes.items()}
    out, top = {}, {}
    for head in meta.attributes:
        p = torch.softmax(logits[head].float(), dim=1).max(dim=1)
        out[head] = p.indices.numpy()
        top[head] = p.values.numpy()
    if confidences is not None:
        confidences.update(top)
    return out


def head_labels(table: FaceTable, attribute: str, classes: Sequence[str]) -> np.ndarray:
    """Labels of ``attribute`` as indices into the model's ``classes`` (IGNORE_INDEX if none).

    The table encodes labels in taxonomy order; a model trained under an older taxonomy may
    list classes differently, so labels are mapped by name. A label the model has no class
    for is ignored (and so not counted as labelled).
    """
    index = {name: i for i, name in enumerate(classes)}
    mapping = np.array([index.get(name, IGNORE_INDEX) for name in ATTRIBUTES[attribute]], dtype=np.int64)
    raw = table.targets[:, table.attributes.index(attribute)]
    out = np.full_like(raw, IGNORE_INDEX)
    labelled = raw != IGNORE_INDEX
    out[labelled] = mapping[raw[labelled]]
    return out


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _bucket_key(bucket: str) -> tuple[float, str]:
    """Sort size buckets by their lower edge (``50-100`` before ``100-128``)."""
    head = bucket.split("-", 1)[0]
    return (float(head) if head.isdigit() else math.inf, bucket)


def accuracy_by(groups: Sequence[str], labels: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, Any]]:
    """Labelled count and accuracy per group value (size bucket, source), groups without labels left out."""
    keep = labels != IGNORE_INDEX
    group_array = np.asarray(groups, dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for group in sorted(set(group_array[keep].tolist()), key=_bucket_key):
        mask = keep & (group_array == group)
        n = int(mask.sum())
        out[group] = {"labelled": n, "accuracy": _round(float((labels[mask] == predicted[mask]).mean()))}
    return out


def score_attributes(
    table: FaceTable,
    predictions: Mapping[str, np.ndarray],
    heads: Mapping[str, Sequence[str]],
    min_labels: int,
    confidences: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Per-attribute report (see module docstring) and the confusion matrix of every ``ok`` head.

    Args:
        table: Evaluated faces; its attributes must include every head.
        predictions: head -> predicted class index per face (table order).
        heads: head -> class names (model.json ``attributes``).
        min_labels: Fewer labels than this gives ``too_few_labels``.
        confidences: head -> probability of the predicted class per face; adds ``ece``.

    Returns:
        (attribute -> report in taxonomy order, then heads unknown to the taxonomy;
        attribute -> int64 ``[C, C]`` confusion matrix for the ``ok`` ones).
    """
    reports: dict[str, dict[str, Any]] = {}
    matrices: dict[str, np.ndarray] = {}
    counts = table.label_counts()
    for attribute in [*ATTRIBUTES, *(h for h in heads if h not in ATTRIBUTES)]:
        if attribute not in heads:
            labelled = int(counts[attribute].sum()) if attribute in counts else 0
            reports[attribute] = {"status": STATUS_NO_HEAD, "labelled": labelled}
            continue
        if attribute not in table.attributes:
            reports[attribute] = {"status": STATUS_TOO_FEW, "labelled": 0, "min_labels": min_labels}
            continue
        classes = list(heads[attribute])
        labels = head_labels(table, attribute, classes)
        labelled = int((labels != IGNORE_INDEX).sum())
        if labelled < min_labels:
            reports[attribute] = {"status": STATUS_TOO_FEW, "labelled": labelled, "min_labels": min_labels}
            continue
        predicted = predictions[attribute]
        cm = confusion_matrix(labels, predicted, len(classes))
        head = head_report(cm, classes)
        floor_accuracy, floor_f1 = majority_floor(cm)
        keep = labels != IGNORE_INDEX
        ece = (
            expected_calibration_error(confidences[attribute][keep], labels[keep] == predicted[keep])
            if confidences is not None and attribute in confidences
            else float("nan")
        )
        reports[attribute] = {
            "status": STATUS_OK,
            "labelled": head["labelled"],
            "accuracy": _round(head["accuracy"]),
            "macro_f1": _round(head["macro_f1"]),
            "floor_accuracy": _round(floor_accuracy),
            "floor_macro_f1": _round(floor_f1),
            "ece": _round(ece),
            "classes": {
                name: {k: (_round(v) if isinstance(v, float) else v) for k, v in stats.items()}
                for name, stats in head["classes"].items()
            },
            "by_bucket": accuracy_by(table.meta["bucket"], labels, predicted),
            "by_source": accuracy_by(table.meta["source"], labels, predicted),
        }
        matrices[attribute] = cm
    return reports, matrices


def confusion_csv(cm: np.ndarray, classes: Sequence[str]) -> str:
    """The matrix as CSV: header ``true\\predicted,<classes>``, one row per true class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *classes])
    for name, row in zip(classes, cm.tolist(), strict=True):
        writer.writerow([name, *row])
    return buffer.getvalue()


def confusion_png(cm: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """PNG of the matrix: cells coloured by row share (recall), annotated with counts.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global
    state), so it is safe in worker threads and on headless machines.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = 1.6 + 0.55 * n
    figure = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(n):
        for j in range(n):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=color)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_confusions(
    matrices: Mapping[str, np.ndarray], heads: Mapping[str, Sequence[str]], reports: Mapping[str, Any], plots_dir: Path
) -> dict[str, dict[str, str]]:
    """Write ``<attribute>.png`` and ``.csv`` per matrix; remove those of attributes not scored now.

    Stale files of a previous run (an attribute that now has too few labels) would otherwise
    pass for current results. Only ``<taxonomy attribute>.png/.csv`` are ever removed.

    Returns:
        attribute -> {"png": path, "csv": path}.
    """
    written = {}
    for attribute, cm in matrices.items():
        classes = list(heads[attribute])
        report = reports[attribute]
        title = (
            f"{attribute}: accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}, n={report['labelled']}"
        )
        png, csv_path = plots_dir / f"{attribute}.png", plots_dir / f"{attribute}.csv"
        write_atomic(csv_path, confusion_csv(cm, classes).encode())
        write_atomic(png, confusion_png(cm, classes, title))
        written[attribute] = {"png": str(png), "csv": str(csv_path)}
    for attribute in {*ATTRIBUTES, *heads} - set(matrices):
        for suffix in (".png", ".csv"):
            (plots_dir / f"{attribute}{suffix}").unlink(missing_ok=True)
    return written


def evaluate(paths: EvaluatePaths, settings: EvaluateSettings) -> dict[str, Any]:
    """Score the model in ``paths.model_dir`` on ``settings.split`` of ``paths.data_dir`` and write outputs.

    Args:
        paths: Model and data to read, metrics file and plots directory to write.
        settings: Split, label threshold and inference settings.

    Returns:
        What ``eval.json`` holds: model, data, device, ``score`` (mean macro-F1 over ``ok``
        attributes, None if none) and ``attributes`` (one report per attribute).

    Raises:
        EvaluateInputError: see :func:`check_inputs`.
    """
    check_inputs(paths, settings.split)
    device = resolve_device(settings.device)
    model, meta = load_model(paths.model_dir, device, settings.max_model_bytes)
    split = None if settings.split == "all" else settings.split
    attributes = list(ATTRIBUTES)
    table = load_face_table(paths.data_dir, attributes=attributes, split=split)
    start = time.perf_counter()
    confidences: dict[str, np.ndarray] = {}
    if meta.backbone == FACE_TRUNK:
        predictions = predict_embedded(model, meta, table, settings.workers, confidences)
    else:
        predictions = predict_table(
            model, table, meta.input_size, device, settings.batch_size, settings.workers, confidences
        )
    seconds = time.perf_counter() - start
    log.info("predicted %d faces on %s in %.1fs (%.0f faces/s)", len(table), device, seconds, len(table) / seconds)
    reports, matrices = score_attributes(table, predictions, meta.attributes, settings.min_labels, confidences)
    published = set(meta.published())
    for attribute, report in reports.items():
        if report.get("status") == "ok":
            report["published"] = attribute in published
    for attribute, files in write_confusions(matrices, meta.attributes, reports, paths.plots_dir).items():
        reports[attribute]["confusion"] = files
    scores = [macro_f1(cm) for cm in matrices.values()]
    data_version = dataset_version(paths.data_dir)
    result = {
        "model": _model_summary(paths.model_dir, meta),
        "data": {
            "dir": str(paths.data_dir),
            "split": settings.split,
            "faces": len(table),
            "data_version": data_version,
            "same_data_as_training": bool(meta.data_version) and meta.data_version == data_version,
        },
        "device": device.type,
        "min_labels": settings.min_labels,
        "score": _round(float(np.mean(scores))) if scores else None,
        "attributes": reports,
    }
    write_atomic(paths.details_path, (json.dumps(result, indent=2) + "\n").encode())
    write_atomic(paths.metrics_file, (json.dumps(headline(result), indent=2) + "\n").encode())
    log.info(
        "wrote %s, %s and %d confusion matrices under %s",
        paths.metrics_file,
        paths.details_path,
        len(matrices),
        paths.plots_dir,
    )
    return result


HEADLINE_KEYS = {"accuracy": "acc", "macro_f1": "f1", "floor_macro_f1": "floor_f1", "ece": "ece"}
"""What eval.json (the DVC metrics) keeps per scored attribute, under short names."""


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The DVC metrics: score, faces and, per scored attribute, accuracy, macro-F1, floor, ECE.

    Everything else (per class, per bucket and source, model and data) goes to the details
    file: nested there, it made ``dvc metrics show`` and ``dvc exp show`` print about 470
    columns. Short keys keep the columns narrow (``gender.f1``, ``gender.floor_f1``).
    """
    out: dict[str, Any] = {"score": result["score"], "faces": result["data"]["faces"]}
    for attribute, report in result["attributes"].items():
        if report.get("status") == STATUS_OK:
            out[attribute] = {short: report.get(key) for key, short in HEADLINE_KEYS.items()}
    return out


def _model_summary(model_dir: Path, meta: ModelMeta) -> dict[str, Any]:
    return {
        "dir": str(model_dir),
        "backbone": meta.backbone,
        "input_size": meta.input_size,
        "version": meta.version,
        "data_version": meta.data_version,
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


SUMMARY_HEADER = ("attribute", "status", "labelled", "accuracy", "floor_acc", "macro_f1", "floor_f1", "ece")
"""Columns of the terminal and Markdown tables: each score beside its majority-class floor."""


def summary_rows(result: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per attribute (:data:`SUMMARY_HEADER`), as display strings."""
    rows = []
    for attribute, report in result["attributes"].items():
        ok = report["status"] == STATUS_OK
        figures = ("accuracy", "floor_accuracy", "macro_f1", "floor_macro_f1", "ece")
        rows.append(
            (
                attribute,
                report["status"],
                str(report["labelled"]),
                *(_cell(report.get(k)) if ok else "-" for k in figures),
            )
        )
    return rows


def format_eval(
    result: Mapping[str, Any], metrics_file: str | os.PathLike[str], plots_dir: str | os.PathLike[str]
) -> str:
    """Plain-text summary table for the terminal."""
    data, model = result["data"], result["model"]
    header = SUMMARY_HEADER
    rows = [header, *summary_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"model {model['dir']} ({model['backbone']}, {model['input_size']} px) on {data['dir']} "
        f"split={data['split']}: {data['faces']} faces, device {result['device']}",
    ]
    if data["same_data_as_training"] and data["split"] in ("train", "all"):
        lines.append("note: this is the model's training data; scores on it are optimistic")
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [
            c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    score = result["score"]
    lines.append(f"score (mean macro-F1 over ok attributes): {_cell(score)}")
    lines.append(
        "floor_*: always answering the most frequent class; a head that does not clearly beat it has learned nothing"
    )
    lines.append(f"metrics: {metrics_file}")
    lines.append(f"confusion matrices: {plots_dir}/<attribute>.png and .csv")
    return "\n".join(lines)


def eval_markdown(result: Mapping[str, Any]) -> str:
    """Markdown table of accuracy and macro-F1 per attribute (the Prefect artifact)."""
    data = result["data"]
    lines = [
        f"# Evaluate: split `{data['split']}` of `{data['dir']}`, {data['faces']} faces",
        "",
        f"Model `{result['model']['dir']}` ({result['model']['backbone']}), device {result['device']}, "
        f"score (mean macro-F1) {_cell(result['score'])}",
        "",
        "| " + " | ".join(SUMMARY_HEADER) + " |",
        "|---|---|" + "---:|" * (len(SUMMARY_HEADER) - 2),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(result)]
    return "\n".join(lines) + "\n"
