"""Fine-tuning fer's expression network on IMFDB, with and without distillation, measured.

    python -m bench.expression_tune --data INGEST_OUT [--photos DIR --labels FILE] \\
        [--distill 0.5,0] [--out bench/results/expression_tune.json]

For each ``distill`` weight (:class:`faces_core.train.tuned.TuneSettings`; the rest at its
defaults) it reports:

* **IMFDB CV**: out-of-fold predictions on the train+val faces of an ingest output, dealt
  into the embedding recipe's person-grouped folds (:func:`faces_core.train.heads.group_folds`),
  each fold scored by a network fine-tuned on the other folds only; pooled accuracy and
  macro-F1 (:mod:`faces_core.train.metrics`), fold mean ± std, and the predicted shares.
* **final**: a network fine-tuned on every train+val face, then scored on the ``test`` split
  (reported, never used to choose) and, with ``--photos/--labels``, on the labelled real
  photos through the annotate path: MTCNN boxes from
  :func:`faces_core.annotate.pipeline.annotate_folders`, matched to the labelled boxes
  (:func:`faces_core.photo_eval.match`), chips from those detector boxes
  (:meth:`faces_core.facechip.FaceEmbedder.chips`), scored by
  :func:`faces_core.photo_eval.score_attribute` on the faces labelled happiness or neutral.

fer's network as shipped (no training) is scored the same way, as the reference row.
Writes the JSON and a markdown table beside it, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faces_core import fernet
from faces_core import photo_eval as pe
from faces_core.facechip import FaceEmbedder
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train import tuned
from faces_core.train.metrics import accuracy, confusion_matrix, macro_f1

CLASSES = ATTRIBUTES["expression"]


def wild_inputs(photos: str, labels_file: str) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """fer inputs and expression labels of the labelled photos' faces, via the annotate path
    (:func:`bench.peers.annotate_labelled`: the same run and matching as the peers bench)."""
    from bench.peers import annotate_labelled, matched_frames
    from flows.params import annotate_config

    settings = annotate_config()[1]
    boxes, detections, matching, _ = annotate_labelled(photos, labels_file, settings, None)
    embedder = FaceEmbedder(flip=False)
    chips, labels = [], []
    for indices, pixels, scaled in matched_frames(photos, matching, settings):
        for i, box in zip(indices, scaled, strict=True):
            label = matching.matched[i][1].labels.get("expression")
            if label in CLASSES:
                chips.extend(embedder.chips(pixels, [box]))
                labels.append(str(label))
    counts = pe.score_photos(detections, boxes, pe.DEFAULT_IOU)["detection"]
    return tuned.grey_inputs(chips), labels, counts


def scores(labels: np.ndarray, logits: np.ndarray, folds: np.ndarray | None = None) -> dict[str, Any]:
    """Pooled accuracy and macro-F1, fold mean ± std, predicted shares (``faces`` 0: nothing)."""
    if len(labels) == 0:
        return {"faces": 0}
    predicted = logits.argmax(axis=1)
    cm = confusion_matrix(labels, predicted, len(CLASSES))
    out: dict[str, Any] = {
        "faces": len(labels),
        "accuracy": round(accuracy(cm), 4),
        "macro_f1": round(macro_f1(cm), 4),
        "predicted_share": {
            CLASSES[i]: round(float((predicted == i).mean()), 3) for i in range(len(CLASSES)) if (predicted == i).any()
        },
    }
    if folds is not None:
        per = [
            macro_f1(confusion_matrix(labels[folds == f], predicted[folds == f], len(CLASSES)))
            for f in sorted(set(folds.tolist()))
        ]
        out["fold_macro_f1"] = {"mean": round(float(np.mean(per)), 4), "std": round(float(np.std(per)), 4)}
    return out


def wild_score(net: fernet.MiniXception, x: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    predicted = fernet.ordered_logits(net, x, fernet.logit_order(CLASSES)).argmax(dim=1).tolist()
    return pe.score_attribute([(t, CLASSES[p]) for t, p in zip(labels, predicted, strict=True)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from faces_core.train.dataset import load_face_table, subset
    from faces_core.train.descriptors import fer_inputs
    from faces_core.train.heads import group_folds, person_groups

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    every = load_face_table(args.data)
    table = subset(every, np.array([s != "test" for s in every.meta["split"]], dtype=bool))
    test = subset(every, np.array([s == "test" for s in every.meta["split"]], dtype=bool))
    folds_all = group_folds(person_groups(table), args.folds)
    column = table.attributes.index("expression")
    keep = table.targets[:, column] >= 0
    labels, folds = table.targets[keep, column], folds_all[keep]
    print(f"crops: {int(keep.sum())} labelled train+val faces, {len(test)} test faces", flush=True)
    x = fer_inputs(subset(table, keep), None, args.workers)  # the training path's chip inputs
    test_keep = test.targets[:, column] >= 0
    x_test = fer_inputs(subset(test, test_keep), None, args.workers)
    y_test = test.targets[test_keep, column]
    wild = wild_inputs(args.photos, args.labels) if args.photos and args.labels else None
    order = fernet.logit_order(CLASSES)
    shipped = fernet.load()
    result: dict[str, Any] = {
        "data": str(args.data),
        "faces": int(keep.sum()),
        "people": len(set(person_groups(table))),
        "folds": args.folds,
        "test_faces": int(test_keep.sum()),
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "fer_weights": fernet.weights_digest(),
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch threads",
        "wild_detection": wild[2] if wild else None,
        "runs": {},
    }
    shipped_row: dict[str, Any] = {
        "cv": scores(labels, fernet.ordered_logits(shipped, x, order).numpy(), folds),
        "test": scores(y_test, fernet.ordered_logits(shipped, x_test, order).numpy()),
    }
    if wild:
        shipped_row["wild"] = wild_score(shipped, wild[0], wild[1])
    result["runs"]["fer as shipped"] = shipped_row
    for weight in args.distill:
        settings = replace(tuned.TuneSettings(), distill=weight, epochs=args.epochs)
        began = time.perf_counter()

        def progress(fold: int, epoch: int, loss: float, w: float = weight) -> None:
            print(f"distill {w}: fold {fold} epoch {epoch} loss {loss:.3f}", flush=True)

        oof = tuned.cross_validated_logits(x, labels, folds, CLASSES, settings, progress)
        cv_s = time.perf_counter() - began
        net = tuned.fine_tune(x, labels, CLASSES, settings)
        row: dict[str, Any] = {
            "settings": asdict(settings),
            "cv": scores(labels, oof, folds),
            "test": scores(y_test, fernet.ordered_logits(net, x_test, order).numpy()),
            "seconds": {"cv": round(cv_s, 1), "final": round(time.perf_counter() - began - cv_s, 1)},
        }
        if wild:
            row["wild"] = wild_score(net, wild[0], wild[1])
        result["runs"][f"fine-tuned, distill {weight}"] = row
        print(markdown(result), flush=True)
        write(result, Path(args.out))
    result["seconds"] = round(time.perf_counter() - start, 1)
    write(result, Path(args.out))
    return result


def _cell(score: dict[str, Any] | None) -> str:
    if not score or score.get("accuracy") is None:
        return "-"
    share = score.get("top_class_share")
    tail = f" ({score['top_class']} {share:.0%})" if share is not None else ""
    return f"{score['accuracy']:.3f}{tail}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Expression heads on {result['faces']:,} IMFDB train+val faces of {result['people']} actors "
        f"({result['folds']} person-grouped folds), {result['test_faces']:,} test faces, and the labelled "
        f"real photos (happiness vs neutral). {result['machine']}; torch {result['versions']['torch']}.",
        "",
        "| head | IMFDB CV acc / macro-F1 (fold mean ± std) | test split acc / macro-F1 | wild photos acc (top class) | CV s |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["runs"].items():
        cv, test = row["cv"], row["test"]
        fold = cv.get("fold_macro_f1", {})
        tested = f"{test['accuracy']:.3f} / {test['macro_f1']:.3f}" if test.get("faces") else "-"
        lines.append(
            f"| {name} | {cv['accuracy']:.3f} / {cv['macro_f1']:.3f} ({fold.get('mean', 0):.3f} ± {fold.get('std', 0):.3f}) "
            f"| {tested} | {_cell(row.get('wild'))} | {row.get('seconds', {}).get('cv', '-')} |"
        )
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.expression_tune", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="an ingest out_dir (IMFDB)")
    p.add_argument("--photos", help="folder of labelled photos")
    p.add_argument("--labels", help="their labels JSON")
    p.add_argument(
        "--distill", type=lambda s: [float(v) for v in s.split(",")], default=[0.5, 0.0], help="weights to try"
    )
    p.add_argument("--epochs", type=int, default=tuned.TuneSettings().epochs)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="processes cutting chips")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default="bench/results/expression_tune.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    print(markdown(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
