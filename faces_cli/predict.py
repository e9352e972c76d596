"""``faces predict``: attribute predictions for image files or URLs as JSON lines, without Prefect."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def run_from_args(args: argparse.Namespace) -> int:
    """Print one JSON line per detected face (per image with ``--whole-image``) or per unreadable input.

    Exit status: 0 when at least one input was predicted, 1 when every input failed,
    2 when the model or a setting is unusable (nothing is predicted then).
    """
    from faces_core.inference.settings import EvaluateInputError
    from flows.params.annotate import annotate_config
    from flows.params.evaluate import predict_config

    try:
        model_dir, settings = predict_config(model_dir=args.model, device=args.device, batch_size=args.batch_size)
        _, annotate_settings, _ = annotate_config()
    except (EvaluateInputError, ValueError) as exc:
        print(f"faces predict: {exc}", file=sys.stderr)
        return 2
    from faces_core.inference.detect import FaceDetector
    from faces_core.inference.predict import Predictor, predict_inputs

    try:
        predictor = Predictor(
            model_dir,
            device=settings.device,
            batch_size=settings.batch_size,
            all_heads=args.all_heads,
            max_model_bytes=settings.max_model_bytes,
        )
        detect = dataclasses.replace(annotate_settings.detect, device=settings.device)
        detector = None if args.whole_image else FaceDetector(detect)
    except (FileNotFoundError, EvaluateInputError, ValueError) as exc:
        print(f"faces predict: {exc}", file=sys.stderr)
        return 2
    predicted = 0
    inputs: list[str] = args.inputs
    # Load and predict a batch of inputs at a time: memory stays bounded and output streams.
    for start in range(0, len(inputs), settings.batch_size):
        chunk = inputs[start : start + settings.batch_size]
        for obj in predict_inputs(
            predictor,
            chunk,
            settings,
            args.probabilities,
            detector,
            annotate_settings.crop_margin,
            annotate_settings.align,
        ):
            predicted += "error" not in obj
            print(json.dumps(obj, ensure_ascii=False), flush=True)
    return 0 if predicted else 1
