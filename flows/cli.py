"""The ``faces`` command: one subcommand per job of the pipeline.

faces sample   write the bundled synthetic sample (both source formats) under data/sample
faces demo     write the sample, serve its images on loopback, ingest, train briefly, evaluate, annotate
faces ingest   run the ingest flow (inputs and settings from params.yaml or flags)
faces train    train the face-attribute model on an ingest output (GPU when there is one)
faces evaluate score a trained model on a split of any ingest output (metrics, confusion matrices)
faces annotate detect and label every face in folders of images and videos (Parquet, COCO, drawn copies)
faces predict  print each image's attribute predictions as JSON lines (no Prefect)
faces serve    serve the deployments to the Prefect server in PREFECT_API_URL
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_SAMPLE_DIR = "data/sample"


def cmd_sample(args: argparse.Namespace) -> int:
    """Write the synthetic sample and say where it is."""
    from faces_core.sample.imfdb import write_imfdb_sample
    from faces_core.sample.tcs import write_tcs_sample

    root = Path(args.out)
    # The slow route answers after 2 s: within the default 10 s timeout, it shows concurrency.
    tcs = write_tcs_sample(root / "tcs", seed=args.seed, slow_delay=2.0)
    write_imfdb_sample(root / "imfdb" / "IMFDB_final", seed=args.seed)
    print(f"TCS sample:   {tcs.jsonl}")
    print(f"IMFDB sample: {root / 'imfdb' / 'IMFDB_final'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Sample -> loopback image server -> ingest -> short train -> evaluate -> annotate, then where to look."""
    from faces_core.report import format_summary
    from faces_core.sample.faces import write_annotate_sample
    from faces_core.sample.tcs import load_routes
    from faces_core.testing import LoopbackServer
    from faces_core.train.evaluate import format_eval
    from flows.annotate import annotate
    from flows.annotate import format_summary as format_annotate
    from flows.evaluate import evaluate
    from flows.ingest import ingest
    from flows.params import evaluate_config, ingest_settings, train_paths
    from flows.train import train

    cmd_sample(args)
    root = Path(args.out)
    with LoopbackServer(load_routes(root / "tcs")) as server:
        summary = ingest(
            tcs=str(root / "tcs" / "faces.jsonl"),
            imfdb_root=str(root / "imfdb" / "IMFDB_final"),
            out_dir=args.out_dir,
            raw_dir=args.raw_dir,
            proxy=server.proxy_url,
        )
    out_dir = ingest_settings(out_dir=args.out_dir).out_dir
    print()
    print(format_summary(summary, out_dir))
    if args.no_train:
        return 0
    trained = train(data_dir=out_dir, epochs=args.epochs)
    _, paths = train_paths(data_dir=out_dir)
    score = trained["best_score"]
    scored = f"validation score {score:.3f}" if score is not None else "val split too small to score: last epoch kept"
    print(
        f"\ntrained {len(trained['epochs'])} epochs on {trained['device']}: best epoch {trained['best_epoch']}, "
        f"{scored}\nmodel:     {paths.model_dir}/model.pt + model.json\n"
        f"metrics:   {paths.metrics_file}\nplots:     {paths.plots_file}\n"
    )
    result = evaluate(data_dir=out_dir, split=args.eval_split)
    eval_paths, _ = evaluate_config(data_dir=out_dir, split=args.eval_split)
    print(format_eval(result, eval_paths.metrics_file, eval_paths.plots_dir))
    print("\nThe sample's faces are drawn, so these scores only show that the pipeline runs end to end.\n")
    photos = write_annotate_sample(root / "photos", seed=args.seed).root
    annotated = annotate(inputs=[str(photos)], out=args.annotations, model_dir=str(paths.model_dir), export="coco")
    print(format_annotate(annotated))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from flows.ingest import run_from_args

    return run_from_args(args)


def cmd_train(args: argparse.Namespace) -> int:
    from flows.train import run_from_args

    return run_from_args(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import run_from_args

    return run_from_args(args)


def cmd_annotate(args: argparse.Namespace) -> int:
    from flows.annotate import run_from_args

    return run_from_args(args)


def cmd_predict(args: argparse.Namespace) -> int:
    """Print one JSON line per detected face (per image with ``--whole-image``) or per unreadable input.

    Exit status: 0 when at least one input was predicted, 1 when every input failed,
    2 when the model or a setting is unusable (nothing is predicted then).
    """
    from faces_core.train.evaluate_settings import EvaluateInputError
    from flows.params import annotate_config, predict_config

    try:
        model_dir, settings = predict_config(model_dir=args.model, device=args.device, batch_size=args.batch_size)
        _, annotate_settings, _ = annotate_config()
    except (EvaluateInputError, ValueError) as exc:
        print(f"faces predict: {exc}", file=sys.stderr)
        return 2
    from faces_core.annotate.detect import FaceDetector
    from faces_core.train.predict import Predictor, predict_inputs

    try:
        predictor = Predictor(model_dir, device=settings.device, batch_size=settings.batch_size)
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


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from flows import annotate as annotate_flow
    from flows import evaluate as evaluate_flow
    from flows import ingest as ingest_flow
    from flows import serve as serve_flow
    from flows import train as train_flow

    parser = argparse.ArgumentParser(prog="faces", description="Batch pipeline for face datasets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = sub.add_parser("sample", help="write the bundled synthetic sample (TCS + IMFDB formats)")
    sample.add_argument("--out", default=DEFAULT_SAMPLE_DIR, help="sample directory (default: %(default)s)")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=cmd_sample)

    demo = sub.add_parser(
        "demo", help="ingest, train briefly, evaluate and annotate on the bundled sample (images on loopback)"
    )
    demo.add_argument("--out", default=DEFAULT_SAMPLE_DIR, help="sample directory (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out-dir", help="output directory (default: params.yaml ingest.out_dir)")
    demo.add_argument("--raw-dir", help="image store (default: params.yaml ingest.raw_dir)")
    demo.add_argument("--epochs", type=int, default=2, help="training epochs on the sample (default: %(default)s)")
    demo.add_argument("--eval-split", default="all", help="split to evaluate on (default: %(default)s)")
    demo.add_argument("--no-train", action="store_true", help="stop after ingest")
    demo.add_argument("--annotations", help="annotate output folder (default: params.yaml annotate.out)")
    demo.set_defaults(func=cmd_demo)

    ingest = sub.add_parser("ingest", help="run the ingest flow")
    ingest_flow.add_arguments(ingest)
    ingest.set_defaults(func=cmd_ingest)

    train = sub.add_parser("train", help="train the multi-task face-attribute model")
    train_flow.add_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a trained model on a split of any ingest output")
    evaluate_flow.add_arguments(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    annotate = sub.add_parser("annotate", help="detect and label every face in folders of images and videos")
    annotate_flow.add_arguments(annotate)
    annotate.set_defaults(func=cmd_annotate)

    predict = sub.add_parser(
        "predict",
        help="print attribute predictions for images (files or http(s) URLs) as JSON lines",
        description="One JSON line per face found by the detector (params.yaml annotate.detect; box = the detected "
        "box) or per unreadable input or image without a face ({input, error: {reason, message}}). Exit status 0 if "
        "any face was predicted, 1 if none, 2 if the model cannot be loaded.",
    )
    predict.add_argument("inputs", nargs="+", metavar="PATH_OR_URL", help="image files or http(s) URLs")
    predict.add_argument("--model", help="model directory (default: params.yaml predict.model_dir)")
    predict.add_argument("--device", choices=("auto", "cuda", "cpu"), help="where to run (default: params.yaml)")
    predict.add_argument("--batch-size", type=int, help="images per forward pass")
    predict.add_argument("--probabilities", action="store_true", help="also print every class's probability")
    predict.add_argument(
        "--whole-image", action="store_true", help="no detection: each image is one face (for pre-cropped faces)"
    )
    predict.set_defaults(func=cmd_predict)

    serve = sub.add_parser("serve", help="serve the deployments to PREFECT_API_URL")
    serve_flow.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``faces`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
