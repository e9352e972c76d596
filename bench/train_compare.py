"""Pretrained start against from scratch (and a few input sizes) on the actor-disjoint split.

Trains each variant with params.yaml's ``train`` settings changed only where the variant
says, picks the winner by the **validation** score (mean macro-F1 over heads; the test
split is never used to choose), and reports test accuracy and macro-F1 per attribute for
every variant so the choice can be checked. Writes ``bench/results/train_compare.json``.

Usage: python -m bench.train_compare --data data/imfdb [--variants imagenet,none]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from faces_core.inference.model import load_model
from faces_core.train.dataset import load_face_table
from faces_core.train.loop import evaluate_batches, make_loader, restrict, train
from faces_core.train.metrics import accuracy, macro_f1
from faces_core.train.settings import TrainPaths
from flows.params import train_settings

RESULTS = Path(__file__).resolve().parent / "results"


def parse_variant(text: str) -> dict[str, Any]:
    """``weights=imagenet;input_size=112`` -> {"weights": "imagenet", "input_size": 112}."""
    out: dict[str, Any] = {}
    for item in text.split(";"):
        key, _, value = item.partition("=")
        out[key] = _number(value)
    return out


def _number(value: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ingest out_dir with train/val/test splits")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="settings overrides, e.g. 'weights=none' or 'weights=imagenet;input_size=112' (repeatable)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--work", default="data/bench/train_compare")
    parser.add_argument("--out", default=str(RESULTS / "train_compare.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    variants = args.variant or ["weights=imagenet", "weights=none"]
    base = train_settings(device=args.device, workers=args.workers)
    results = []
    for text in variants:
        settings = replace(base, **parse_variant(text))
        work = Path(args.work) / text.replace(";", "_").replace("=", "-").replace("/", "_")
        paths = TrainPaths(work / "models", work / "train.json", work / "train.csv", work / "ckpt")
        start = time.perf_counter()
        result = train(args.data, settings, paths)
        seconds = time.perf_counter() - start
        model, meta = load_model(paths.model_dir, result.device)
        test = restrict(load_face_table(args.data, split="test"), list(meta.attributes))
        _, cms = evaluate_batches(
            model, make_loader(test, settings, model_device(model), False), meta.attributes, settings
        )
        entry = {
            "variant": text,
            "seconds": round(seconds, 1),
            "best_epoch": result.best_epoch,
            "val_score": round(result.best_score, 4),
            "val_loss_at_best": round(next(e.val_loss for e in result.epochs if e.epoch == result.best_epoch), 4),
            "last_epoch_val_score": round(result.epochs[-1].val_score, 4),
            "test": {
                a: {"accuracy": round(accuracy(cm), 4), "macro_f1": round(macro_f1(cm), 4), "labelled": int(cm.sum())}
                for a, cm in cms.items()
            },
            "device": result.device,
        }
        results.append(entry)
        print(json.dumps(entry, indent=2), flush=True)
    winner = max(results, key=lambda r: r["val_score"])
    report = {"chosen_by_val_score": winner["variant"], "variants": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"winner by validation score: {winner['variant']}; wrote {out}")
    return 0


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


if __name__ == "__main__":
    raise SystemExit(main())
