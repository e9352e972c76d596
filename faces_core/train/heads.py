"""The ``embedding`` recipe: calibrated attribute heads on the frozen face trunk, chosen by
actor-grouped cross-validation.

Why this recipe is the default: a CNN fine-tuned on 50 IMFDB actors learns those actors and
their crop framing (on real group photos it called most women male and most adults
"child"). dlib's face descriptor was trained on ~3M faces in the wild, so heads on it carry
what it knows about faces to people and photos it never saw. The descriptor of every face
is computed once through :mod:`faces_core.facechip` (the same path ``annotate`` uses) and
cached, so cross-validation, calibration and the final fit take seconds.

How a model is chosen, so that a failure can be seen:

1. Faces are grouped by person (IMFDB ``subject``; a TCS image is its own group) and the
   groups are dealt into ``k`` folds. No person is in both a fold's training and held-out
   faces, so the figures estimate accuracy on people the model never saw.
2. For each head, each candidate (L2 strength x class weighting x distillation weight
   toward a shipped network's answer, :mod:`faces_core.train.teachers`) is scored by the macro-F1
   of the pooled held-out predictions (every face predicted by a model that never saw that
   person); the best is kept. Mean and std are over the folds holding every class; a fold
   lacking a class (IMFDB has all-male groups of actors) is listed, not averaged in.
3. The kept candidate's held-out logits fit one temperature per head (calibration).
4. A head is *published* (``reliable: true``) only when its cross-validated macro-F1 beats
   its floor by ``min_gain``: the better of always answering the majority class and guessing
   by the class shares (macro-F1 1/K, which a head fitted to noise reaches); ``annotate`` and ``predict`` leave unpublished
   heads empty unless asked.
5. The final heads are fitted on every training face with the kept candidate.

Nothing here reads the ``test`` split: that stays for ``faces evaluate``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from faces_core import agnet, fernet
from faces_core.facechip import trunk_digest
from faces_core.files import write_json
from faces_core.inference.model import EmbeddingHeads
from faces_core.train.boxes import locate
from faces_core.train.dataset import IGNORE_INDEX, FaceTable, subset
from faces_core.train.descriptors import embed_table
from faces_core.train.metrics import (
    accuracy,
    confusion_matrix,
    expected_calibration_error,
    macro_f1,
    majority_floor,
)
from faces_core.train.settings import HeadsSettings
from faces_core.train.teachers import fer_columns, teacher_of

log = logging.getLogger(__name__)

# --- folds and heads -----------------------------------------------------------------------


def person_groups(table: FaceTable) -> list[str]:
    """The person of every face: IMFDB's subject; a TCS face's image (no names there)."""
    subjects, sources, images = table.meta["subject"], table.meta["source"], table.meta["image_sha256"]
    return [
        f"{source}:{subject}" if subject not in ("", "None") else f"{source}:image:{image}"
        for subject, source, image in zip(subjects, sources, images, strict=True)
    ]


def group_folds(groups: Sequence[str], k: int) -> np.ndarray:
    """Fold index of every face: whole groups dealt largest first to the smallest fold.

    Deterministic (ties broken by name), and with ``k`` <= number of groups every fold
    gets at least one group.
    """
    names, counts = np.unique(np.asarray(groups, dtype=object), return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], str(names[i])))
    sizes = [0] * k
    fold_of: dict[str, int] = {}
    for i in order:
        target = min(range(k), key=lambda f: (sizes[f], f))
        fold_of[str(names[i])] = target
        sizes[target] += int(counts[i])
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def class_weights(labels: np.ndarray, classes: int, mode: str, cap: float) -> torch.Tensor:
    """Per-class loss weights: 1 (``none``) or inverse frequency, at most ``cap`` x the most
    frequent class's weight (normalised to mean 1 over the classes present)."""
    if mode == "none":
        return torch.ones(classes)
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    w = np.zeros(classes)
    seen = counts > 0
    w[seen] = counts[seen].sum() / (seen.sum() * counts[seen])
    w = np.minimum(w, cap * w[seen].min())  # a class weighs at most cap x the most frequent one
    w[seen] = w[seen] / w[seen].mean()
    return torch.tensor(w, dtype=torch.float32)


def fit_softmax(
    x: np.ndarray,
    y: np.ndarray,
    classes: int,
    l2: float,
    weights: torch.Tensor,
    iterations: int = 200,
    soft: np.ndarray | None = None,
    distill: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted, L2-regularised softmax regression on standardised features (full-batch L-BFGS).

    With ``soft`` (a teacher's softened answer per face, :mod:`faces_core.train.teachers`)
    and ``distill`` > 0 the loss is ``(1 - distill) * CE + distill * T^2 * KL(soft || head_T)``.

    Returns:
        (weight ``[C, D]``, bias ``[C]``).
    """
    from faces_core.train.teachers import TEMPERATURE, distilled

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    st = torch.from_numpy(soft) if soft is not None and distill > 0 else None
    w = torch.zeros(classes, x.shape[1], requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = xt @ w.T + b
        loss = F.cross_entropy(z, yt, weight=weights)
        if st is not None:
            loss = distilled(loss, z, st, distill, TEMPERATURE)
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising held-out negative log-likelihood (golden-section on log T)."""
    lt, yt = torch.from_numpy(logits).float(), torch.from_numpy(labels)

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(lt / math.exp(log_t), yt))

    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def _ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = torch.softmax(torch.from_numpy(logits).float() / temperature, dim=1)
    top = p.max(dim=1)
    return expected_calibration_error(top.values.numpy(), (top.indices.numpy() == labels))


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class HeadResult:
    """What cross-validation found for one head."""

    attribute: str
    classes: list[str]
    l2: float
    weighting: str
    report: dict[str, Any]
    temperature: float
    oof_predictions: np.ndarray
    labelled: np.ndarray
    peer: tuple[int, ...] | None = None
    """Descriptor columns holding a peer network's logit per class: the head passes them on."""
    distill: float = 0.0
    """Weight of the distillation term toward the head's teacher (0: labels only)."""


def cross_validate_head(
    attribute: str,
    classes: Sequence[str],
    x: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    settings: HeadsSettings,
    peer: Sequence[int] | None = None,
    soft: np.ndarray | None = None,
) -> HeadResult:
    """Choose L2, weighting and distillation for one head by grouped CV; calibrate; report
    mean and std.

    Args:
        labels: Class index per face, IGNORE_INDEX where unlabelled.
        folds: Fold index per face (:func:`group_folds`).
        peer: Descriptor columns of a peer network's logits, one per class: the head is then
            that network as shipped (nothing fitted but the temperature), scored on the same
            folds so its figures compare with a trained head's.
        soft: A teacher's softened answer per face (:func:`faces_core.train.teachers.teacher_of`):
            each of ``settings.peer_distill`` is then a candidate weight of the distillation
            term (None: labels only).
    """
    keep = labels != IGNORE_INDEX
    xs, ys, fs = x[keep], labels[keep], folds[keep]
    ss = soft[keep] if soft is not None else None
    c = len(classes)
    k = settings.folds
    best: tuple[float, float, str, float, np.ndarray, list[dict[str, Any]]] | None = None
    grid = [
        (weighting, l2, distill)
        for weighting in (("fer",) if peer is not None else settings.weighting)
        for l2 in ((0.0,) if peer is not None else settings.l2)
        for distill in (settings.peer_distill if ss is not None and peer is None else (0.0,))
    ]
    for weighting, l2, distill in grid:
        oof = np.zeros((len(ys), c), dtype=np.float32)
        per_fold: list[dict[str, Any]] = []
        for fold in range(k):
            test = fs == fold
            train = ~test
            if not test.any() or len(np.unique(ys[train])) < 2:
                per_fold.append({"fold": fold, "faces": int(test.sum()), "scored": False, "reason": "empty"})
                continue
            if peer is not None:
                logits = torch.from_numpy(np.ascontiguousarray(xs[test][:, list(peer)]))
            else:
                mean, std = _standardise(xs[train])
                weights = class_weights(ys[train], c, weighting, settings.max_class_weight)
                teach = ss[train] if ss is not None else None
                w, b = fit_softmax((xs[train] - mean) / std, ys[train], c, l2, weights, soft=teach, distill=distill)
                logits = torch.from_numpy((xs[test] - mean) / std) @ w.T + b
            oof[test] = logits.numpy()
            predicted = logits.argmax(dim=1).numpy()
            # the floor answers the majority class of the *training* faces, as a lazy model would
            lazy = np.full_like(ys[test], int(np.bincount(ys[train], minlength=c).argmax()))
            cm = confusion_matrix(ys[test], predicted, c)
            absent = [classes[i] for i in range(c) if not (ys[test] == i).any() and (ys[train] == i).any()]
            per_fold.append(
                {
                    "fold": fold,
                    "faces": int(test.sum()),
                    "scored": True,
                    "accuracy": float(np.trace(cm) / cm.sum()),
                    "macro_f1": macro_f1(confusion_matrix(ys[test], predicted, c)),
                    "floor_accuracy": float((lazy == ys[test]).mean()),
                    # the better of two lazy answers: always the majority class, or a guess drawn
                    # from the class shares (macro-F1 1/K): a noise head reaches the latter
                    "floor_macro_f1": max(
                        macro_f1(confusion_matrix(ys[test], lazy, c)), 1.0 / len(np.unique(ys[test]))
                    ),
                    "absent_classes": absent,
                    # a fold without every class gives a macro-F1 that means little (an all-male
                    # fold scores 0.5 for one wrong "female"): listed, left out of mean and std
                    "complete": not absent,
                }
            )
        fitted = np.isin(fs, [f["fold"] for f in per_fold if f["scored"]])
        score = macro_f1(confusion_matrix(ys[fitted], oof[fitted].argmax(axis=1), c)) if fitted.any() else -1.0
        if best is None or score > best[0] + 1e-9:
            best = (score, l2, weighting, distill, oof, per_fold)
    assert best is not None
    score, l2, weighting, distill, oof, per_fold = best
    scored = [f for f in per_fold if f["scored"]]
    fitted = np.isin(fs, [f["fold"] for f in scored])
    temperature = fit_temperature(oof[fitted], ys[fitted]) if fitted.any() else 1.0
    predicted = oof.argmax(axis=1)
    cm = confusion_matrix(ys[fitted], predicted[fitted], c)
    recall = np.divide(np.diag(cm), cm.sum(axis=1), out=np.zeros(c), where=cm.sum(axis=1) > 0)
    complete = [f for f in scored if f["complete"]]
    floor_acc, majority_f1 = majority_floor(cm)
    present = int((cm.sum(axis=1) > 0).sum())
    floor_f1 = max(majority_f1, 1.0 / present) if present else float("nan")

    def stat(key: str, pooled: float) -> dict[str, Any]:
        values = [f[key] for f in complete]
        out: dict[str, Any] = {"pooled": None if math.isnan(pooled) else round(pooled, 4), "folds": len(values)}
        if values:
            out.update(mean=round(float(np.mean(values)), 4), std=round(float(np.std(values)), 4))
        return out

    report: dict[str, Any] = {
        "faces": len(ys),
        "class_counts": {classes[i]: int((ys == i).sum()) for i in range(c)},
        "accuracy": stat("accuracy", accuracy(cm) if cm.sum() else float("nan")),
        "macro_f1": stat("macro_f1", macro_f1(cm) if cm.sum() else float("nan")),
        "floor_accuracy": stat("floor_accuracy", floor_acc),
        "floor_macro_f1": stat("floor_macro_f1", floor_f1),
        "recall": {classes[i]: round(float(recall[i]), 4) for i in range(c) if cm[i].sum()},
        "predicted_share": {
            classes[i]: round(float((predicted == i).mean()), 4) for i in range(c) if (predicted == i).any()
        },
        "folds": per_fold,
        "folds_missing_a_class": {str(f["fold"]): f["absent_classes"] for f in scored if f["absent_classes"]},
        "chosen": {"l2": l2, "weighting": weighting, **({"distill": distill} if ss is not None else {})},
        "ece_before": round(_ece(oof[fitted], ys[fitted]), 4) if fitted.any() else None,
        "ece_after": round(_ece(oof[fitted], ys[fitted], temperature), 4) if fitted.any() else None,
        "temperature": round(temperature, 4),
    }
    f1, floor = report["macro_f1"]["pooled"], report["floor_macro_f1"]["pooled"]
    gain = (f1 - floor) if f1 is not None and floor is not None else 0.0
    report["gain_over_floor"] = round(gain, 4)
    report["reliable"] = bool(scored) and gain >= settings.min_gain
    if peer is not None:
        report["chosen"] = {"peer": "fer (FER2013 mini-Xception, as shipped; temperature fitted here)"}
    return HeadResult(
        attribute,
        list(classes),
        l2,
        weighting,
        report,
        temperature,
        predicted,
        keep,
        tuple(peer) if peer else None,
        distill,
    )


def fit_heads(
    x: np.ndarray,
    table: FaceTable,
    heads: dict[str, list[str]],
    results: dict[str, HeadResult],
    settings: HeadsSettings,
    features: int | None = None,
    tuned: torch.nn.Module | None = None,
    teachers: dict[str, np.ndarray] | None = None,
) -> EmbeddingHeads:
    """The final heads on every labelled face, with the CV-chosen settings and temperatures.

    Args:
        features: Leading descriptor columns a trained head may use (None: all); the columns
            after them are a peer's logits, which only that peer's head reads (zero weights
            elsewhere, as cross-validation saw them).
        tuned: The fine-tuned expression network (``expression_head: tuned``), stored in the model.
        teachers: Soft targets per head, for the heads whose chosen ``distill`` is above 0.
    """
    model = EmbeddingHeads({a: len(c) for a, c in heads.items()}, dim=x.shape[1], tuned=tuned is not None)
    mean, std = _standardise(x)
    state = model.state_dict()
    state["mean"], state["std"] = torch.from_numpy(mean), torch.from_numpy(std)
    if tuned is not None:
        state.update({f"expression_net.{k}": v.contiguous() for k, v in tuned.state_dict().items()})
    z = (x - mean) / std
    used = x.shape[1] if features is None else features
    for i, (attribute, classes) in enumerate(heads.items()):
        labels = table.targets[:, table.attributes.index(attribute)]
        keep = labels != IGNORE_INDEX
        result = results[attribute]
        if result.peer is not None:  # pass the peer's logits through: w.z + b == x[column]
            w, b = torch.zeros(len(classes), x.shape[1]), torch.zeros(len(classes))
            for j, column in enumerate(result.peer):
                w[j, column], b[j] = float(std[column]), float(mean[column])
        else:
            weights = class_weights(labels[keep], len(classes), result.weighting, settings.max_class_weight)
            w, b = torch.zeros(len(classes), x.shape[1]), torch.zeros(len(classes))
            soft = (teachers or {}).get(attribute) if result.distill > 0 else None
            w[:, :used], b = fit_softmax(
                np.ascontiguousarray(z[keep][:, :used]),
                labels[keep],
                len(classes),
                result.l2,
                weights,
                soft=soft[keep] if soft is not None else None,
                distill=result.distill,
            )
        state[f"heads.{attribute}.weight"], state[f"heads.{attribute}.bias"] = w, b
        state["temperature"][i] = result.temperature
    model.load_state_dict(state)
    return model.eval()


# --- the recipe ----------------------------------------------------------------------------


@dataclass
class HeadsRun:
    """What :func:`train_heads` reports."""

    model_path: Path
    version: str
    faces: int
    groups: int
    folds: int
    heads: dict[str, dict[str, Any]]
    metrics: dict[str, Any]
    seconds: float


def train_heads(
    data_dir: str | os.PathLike[str],
    settings: Any,
    paths: Any,
    progress: Callable[[int, int], None] | None = None,
) -> HeadsRun:
    """Run the embedding recipe on the ``train`` and ``val`` faces of an ingest output.

    Args:
        data_dir: Ingest ``out_dir``.
        settings: :class:`~faces_core.train.settings.TrainSettings` (``min_labels``,
            ``source``, ``min_side``, ``heads``).
        paths: :class:`~faces_core.train.settings.TrainPaths`; descriptors are cached under
            ``checkpoint_dir/embeddings``.
        progress: Called with (faces embedded, total).

    Raises:
        TrainInputError: no faces, no head with enough labels, or fewer than two people.
    """
    from dataclasses import asdict

    from faces_core.inference.model import FACE_TRUNK, ModelMeta, save_model
    from faces_core.train.dataset import dataset_version, load_face_table
    from faces_core.train.loop import TrainInputError, _plain, select_heads, weights_digest

    start = time.perf_counter()
    hs: HeadsSettings = settings.heads
    every = load_face_table(data_dir, source=settings.source, min_side=settings.min_side)
    table = subset(every, np.array([s != "test" for s in every.meta["split"]], dtype=bool))
    if len(table) == 0:
        raise TrainInputError(
            f"no training faces (train or val split) in {data_dir}: run `faces ingest` first or check filters"
        )
    located: dict[str, int | str] = {}
    if hs.boxes == "detector":  # every face cut as annotate cuts it (faces_core.train.boxes)
        table, located = locate(table, hs.undetected, Path(paths.checkpoint_dir) / "boxes", progress)
    heads = select_heads(table, settings.min_labels)
    groups = person_groups(table)
    people = len(set(groups))
    if people < 2:
        raise TrainInputError(f"{data_dir} has faces of one person only: cross-validation needs two or more")
    k = min(hs.folds, people)
    folds = group_folds(groups, k)
    log.info("embedding recipe: %d faces of %d people, %d folds, heads %s", len(table), people, k, ", ".join(heads))
    x = embed_table(
        table,
        Path(paths.checkpoint_dir) / "embeddings",
        hs.flip,
        hs.embed_workers,
        progress,
        hs.expression,
        agegender=hs.agegender,
        also=("chip",) if hs.expression_head == "tuned" and "expression" in heads else (),  # one pass, one chip
    )
    results = {}
    teachers: dict[str, np.ndarray] = {}
    features = x.shape[1]
    tuned_net = None
    for attribute, classes in heads.items():
        labels = table.targets[:, table.attributes.index(attribute)]
        if attribute == "expression" and hs.expression_head == "tuned":
            results[attribute], tuned_net, logits = _tuned_head(table, labels, folds, classes, hs, paths, progress)
            x = np.concatenate([x, logits], axis=1)  # the embedder appends them the same way
            results[attribute].peer = tuple(range(features, features + len(classes)))
        else:
            peer = fer_columns(classes) if attribute == "expression" and hs.expression_head == "fer" else None
            soft = teacher_of(attribute, classes, x, hs.agegender, hs.expression)
            if soft is not None:
                teachers[attribute] = soft
            results[attribute] = cross_validate_head(attribute, classes, x[:, :features], labels, folds, hs, peer, soft)
        r = results[attribute].report
        log.info(
            "%s: CV macro-F1 %.3f (fold mean %.3f ± %.3f over %d complete folds; floor %.3f), accuracy %.3f, "
            "ECE %.3f -> %.3f, %s",
            attribute,
            r["macro_f1"]["pooled"] or float("nan"),
            r["macro_f1"].get("mean", float("nan")),
            r["macro_f1"].get("std", float("nan")),
            r["macro_f1"]["folds"],
            r["floor_macro_f1"]["pooled"] or float("nan"),
            r["accuracy"]["pooled"] or float("nan"),
            r["ece_before"] or float("nan"),
            r["ece_after"] or float("nan"),
            "published" if r["reliable"] else "NOT published (does not beat its floor by min_gain)",
        )
    model = fit_heads(x, table, heads, results, hs, features, tuned_net, teachers)
    data_version = dataset_version(data_dir)
    digest = weights_digest(model)
    trunks = trunk_digest()[:8] + (f"+fer{fernet.weights_digest()[:8]}" if hs.expression else "")
    trunks += f"+ag{agnet.weights_digest()[:8]}" if hs.agegender else ""
    trunks += "+tuned" if tuned_net is not None else ""
    version = f"{FACE_TRUNK}-{trunks}-{data_version[:12]}-{digest[:8]}"
    reports = {a: r.report for a, r in results.items()}
    meta = ModelMeta(
        backbone=FACE_TRUNK,
        input_size=150,
        attributes=heads,
        dropout=0.0,
        data_version=data_version,
        version=version,
        params=_plain(asdict(settings)),
        metrics={"faces": len(table), "people": people, "folds": k, **({"boxes": located} if located else {})},
        heads=reports,
    )
    model_path = save_model(model, meta, paths.model_dir)
    # the DVC metrics: two columns a head (dvc exp show stays readable); accuracy, floor, std,
    # ECE before calibration and every fold are in model.json and plots/train.csv
    metrics: dict[str, Any] = {
        "faces": len(table),
        "people": people,
        "folds": k,
        "published": sum(1 for r in reports.values() if r["reliable"]),
    }
    for attribute, r in reports.items():
        metrics[attribute] = {"cv_f1": r["macro_f1"]["pooled"], "ece": r["ece_after"]}
    write_json(metrics, paths.metrics_file)
    _write_head_plots(Path(paths.plots_file), reports)
    return HeadsRun(model_path, version, len(table), people, k, reports, metrics, round(time.perf_counter() - start, 1))


def _tuned_head(
    table: FaceTable,
    labels: np.ndarray,
    folds: np.ndarray,
    classes: Sequence[str],
    hs: HeadsSettings,
    paths: Any,
    progress: Callable[[int, int], None] | None,
) -> tuple[HeadResult, torch.nn.Module, np.ndarray]:
    """``expression_head: tuned``: fer's inputs of every chip (cached with the descriptors),
    then :func:`faces_core.train.tuned.cross_validate_tuned_head`, with a log line an epoch."""
    from faces_core.train.descriptors import fer_inputs
    from faces_core.train.tuned import cross_validate_tuned_head

    x = fer_inputs(table, Path(paths.checkpoint_dir) / "embeddings", hs.embed_workers, progress)
    began = time.perf_counter()

    def report(fold: int, epoch: int, loss: float) -> None:
        where = "final network" if fold < 0 else f"fold {fold + 1}/{hs.folds}"
        log.info(
            "tuned expression head: %s, epoch %d/%d, loss %.3f (%.0f s)",
            where,
            epoch + 1,
            hs.tune_epochs,
            loss,
            time.perf_counter() - began,
        )

    return cross_validate_tuned_head(x, labels, folds, classes, hs, report)


def _write_head_plots(path: Path, reports: dict[str, dict[str, Any]]) -> None:
    """plots/train.csv for this recipe: one row per head, cross-validated against its floor."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["head", "cv_macro_f1", "cv_macro_f1_std", "floor_macro_f1", "cv_accuracy", "ece_before", "ece_after"]
        )
        for attribute, r in reports.items():
            writer.writerow(
                [
                    attribute,
                    r["macro_f1"]["pooled"],
                    r["macro_f1"].get("std"),
                    r["floor_macro_f1"]["pooled"],
                    r["accuracy"]["pooled"],
                    r["ece_before"],
                    r["ece_after"],
                ]
            )
    os.replace(tmp, path)
