"""The ``faces`` command: one subcommand per job of the pipeline.

faces sample   write the bundled synthetic sample (both source formats) under data/sample
faces demo     the whole pipeline (ingest, train, evaluate, annotate) on the sample through `dvc repro`, then where to look
faces repro    `dvc repro` (or `dvc exp run` with a params profile), serialised with other DVC calls
faces ingest   run the ingest flow (inputs and settings from params.yaml or flags)
faces train    train the face-attribute model on an ingest output (GPU when there is one)
faces evaluate score a trained model on a split of any ingest output (metrics, confusion matrices),
               or with --photos/--labels on labelled photos through the annotate path
faces annotate detect and label every face in folders of images and videos (Parquet, COCO, drawn copies)
faces predict  print each image's attribute predictions as JSON lines (no Prefect)
faces serve    serve every deployment (starts a local Prefect server when PREFECT_API_URL is unset)
faces doctor   explain common failures (server, proxy, serve process, DVC lock, model, Parquet) and their fixes
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence


def cmd_sample(args: argparse.Namespace) -> int:
    """Write the synthetic sample and say where it is."""
    from faces_cli.sample import run_from_args

    return run_from_args(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    from faces_cli.doctor import run_from_args

    return run_from_args(args)


def cmd_ingest(args: argparse.Namespace) -> int:
    from faces_cli.ingest import run_from_args

    return run_from_args(args)


def cmd_train(args: argparse.Namespace) -> int:
    from faces_cli.train import run_from_args

    return run_from_args(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score an ingest split, or with ``--photos``/``--labels`` run the in-the-wild photo check."""
    from faces_cli import evaluate_photos

    if evaluate_photos.wants_photos(args):
        return evaluate_photos.run_from_args(args)
    from faces_cli.evaluate import run_from_args

    return run_from_args(args)


def cmd_annotate(args: argparse.Namespace) -> int:
    from faces_cli.annotate import run_from_args

    return run_from_args(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from faces_cli.serve import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from faces_cli import annotate as annotate_flow
    from faces_cli import demo as demo_cmd
    from faces_cli import doctor as doctor_flow
    from faces_cli import evaluate as evaluate_flow
    from faces_cli import evaluate_photos
    from faces_cli import ingest as ingest_flow
    from faces_cli import predict as predict_cmd
    from faces_cli import sample as sample_flow
    from faces_cli import serve as serve_flow
    from faces_cli import train as train_flow

    parser = argparse.ArgumentParser(prog="faces", description="Batch pipeline for face datasets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = sub.add_parser("sample", help="write the bundled synthetic sample (TCS + IMFDB formats)")
    sample_flow.add_arguments(sample)
    sample.set_defaults(func=cmd_sample)

    demo = sub.add_parser(
        "demo",
        help="the whole pipeline on the bundled sample through `dvc repro` (--direct: the flows without DVC)",
    )
    demo.add_argument("--direct", action="store_true", help="run sample, ingest, train, evaluate without DVC")
    demo.add_argument("--out", help=f"sample directory (implies --direct; default: {demo_cmd.DEFAULT_SAMPLE_DIR})")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out-dir", help="output directory (implies --direct; default: params.yaml ingest.out_dir)")
    demo.add_argument("--raw-dir", help="image store (implies --direct; default: params.yaml ingest.raw_dir)")
    demo.add_argument("--epochs", type=int, default=2, help="--direct: training epochs (default: %(default)s)")
    demo.add_argument("--eval-split", default="all", help="--direct: split to evaluate on (default: %(default)s)")
    demo.add_argument("--no-train", action="store_true", help="--direct: stop after ingest")
    demo.add_argument(
        "--annotations", help="--direct: annotate output folder (default: params.yaml annotate.adhoc_out)"
    )
    demo.set_defaults(func=demo_cmd.cmd_demo)

    repro = sub.add_parser(
        "repro",
        help="dvc repro (or dvc exp run with --profile), waiting for any other DVC call of ours",
        description="Without --profile: `dvc repro [ARGS]`. With --profile NAME: `dvc exp run -S key=value ... [ARGS]` "
        "with the overrides in params-NAME.yaml (e.g. imfdb: real IMFDB data, 8 epochs).",
    )
    repro.add_argument("--profile", help="params profile: params-<PROFILE>.yaml beside params.yaml")
    repro.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed on to dvc (after --)")
    repro.set_defaults(func=demo_cmd.cmd_repro)

    ingest = sub.add_parser("ingest", help="run the ingest flow")
    ingest_flow.add_arguments(ingest)
    ingest.set_defaults(func=cmd_ingest)

    train = sub.add_parser("train", help="train the multi-task face-attribute model")
    train_flow.add_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "evaluate", help="score a trained model on a split of any ingest output, or on labelled photos (--photos)"
    )
    evaluate_flow.add_arguments(evaluate)
    evaluate_photos.add_arguments(evaluate)
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
    predict.add_argument(
        "--all-heads",
        action="store_true",
        help="also print heads the model withholds (model.json reliable: false: no better than its floor)",
    )
    predict.set_defaults(func=predict_cmd.run_from_args)

    serve = sub.add_parser("serve", help="serve the deployments to PREFECT_API_URL")
    serve_flow.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser("doctor", help="explain common failures and how to fix each")
    doctor_flow.add_arguments(doctor)
    doctor.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``faces`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise
    args = build_parser().parse_args(argv)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand under the one stop path every command shares (:mod:`faces_cli.stopping`)."""
    from faces_cli.stopping import run_stoppable

    return run_stoppable(args.command, lambda: int(args.func(args)))


if __name__ == "__main__":
    raise SystemExit(main())
