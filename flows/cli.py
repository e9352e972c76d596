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
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_SAMPLE_DIR = "data/sample"


def cmd_sample(args: argparse.Namespace) -> int:
    """Write the synthetic sample and say where it is."""
    from flows.sample import run_from_args

    return run_from_args(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """``dvc repro`` of the pipeline on the bundled sample, then where to look.

    With ``--direct`` (implied by ``--out``, ``--out-dir`` or ``--raw-dir``) the flows run one
    after the other without DVC, as before the pipeline had a dvc.yaml.
    """
    if args.direct or args.out or args.out_dir or args.raw_dir:
        return _demo_direct(args)
    from faces_core import dvcrepo
    from flows.pipeline import lock_wait_s

    if not Path("dvc.yaml").is_file():
        print(
            "faces demo: no dvc.yaml here: run it from the project root, or use `faces demo --direct`", file=sys.stderr
        )
        return 2
    try:
        rc, output = dvcrepo.run_dvc(["repro"], wait_s=lock_wait_s(), on_line=print)
    except (dvcrepo.DvcBusyError, dvcrepo.DvcNotFoundError) as exc:
        print(f"faces demo: {exc}", file=sys.stderr)
        return 1
    if rc != 0:
        print(
            f"faces demo: dvc repro failed (exit status {rc}); `faces doctor` explains common causes", file=sys.stderr
        )
        return rc
    ran = dvcrepo.stages_run(output)
    print("\n" + where_to_look(ran))
    return 0


def where_to_look(ran: Sequence[str]) -> str:
    """What the pipeline wrote and the commands that show it (paths from params.yaml)."""
    from faces_core.report import format_summary
    from flows.params import load_params
    from flows.params.evaluate import evaluate_config
    from flows.params.ingest import ingest_settings
    from flows.params.train import train_paths

    params = load_params()
    out_dir = ingest_settings(params).out_dir
    _, paths = train_paths(params)
    eval_paths, _ = evaluate_config(params)
    lines = [f"dvc repro ran: {', '.join(ran) if ran else 'nothing (every stage up to date)'}"]
    summary = Path(out_dir) / "summary.json"
    if summary.is_file():
        lines.append(format_summary(json.loads(summary.read_text()), out_dir))
    lines += [
        f"model:     {paths.model_dir}/model.pt + model.json",
        f"metrics:   {paths.metrics_file}, {eval_paths.metrics_file}   (dvc metrics show; dvc metrics diff)",
        f"plots:     {paths.plots_file}, {eval_paths.plots_dir}/*.png   (dvc plots show: dvc_plots/index.html, offline)",
        "experiments: dvc exp run -S train.lr=0.0005; dvc exp show",
        "Prefect UI: faces serve, then the URL it prints",
        "The sample's faces are drawn, so these scores only show that the pipeline runs end to end.",
    ]
    return "\n".join(lines)


def format_heads(rows: list[dict[str, Any]]) -> str:
    """The embedding recipe's heads: CV macro-F1 ± std against the floor, ECE, published or not."""

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "-"

    lines = [f"  {'head':<13} {'CV macro-F1':>16} {'floor':>6} {'CV acc':>7} {'ECE':>6}  published"]
    for r in rows:
        f1 = f"{cell(r['cv_macro_f1'])} ± {cell(r['std'])}"
        lines.append(
            f"  {r['head']:<13} {f1:>16} {cell(r['floor_macro_f1']):>6} {cell(r['cv_accuracy']):>7} "
            f"{cell(r['ece_after']):>6}  {'yes' if r['published'] else 'no (not clearly above its floor)'}"
        )
    return "\n".join(lines)


def _demo_direct(args: argparse.Namespace) -> int:
    """Sample -> loopback image server -> ingest -> short train -> evaluate -> annotate, without DVC."""
    from faces_core.report import format_summary
    from faces_core.sample.faces import write_annotate_sample
    from faces_core.sample.tcs import load_routes
    from faces_core.testing import LoopbackServer
    from faces_core.train.evaluate import format_eval
    from flows.annotate import annotate
    from flows.annotate import format_summary as format_annotate
    from flows.evaluate import evaluate
    from flows.ingest import ingest
    from flows.params.evaluate import evaluate_config
    from flows.params.ingest import ingest_settings
    from flows.params.train import train_paths
    from flows.sample import sample_settings, write_sample
    from flows.train import train

    root = Path(args.out or DEFAULT_SAMPLE_DIR)
    tcs, imfdb_root = write_sample(sample_settings(out_dir=str(root), seed=args.seed))
    with LoopbackServer(load_routes(tcs.parent)) as server:
        summary = ingest(
            tcs=str(tcs),
            imfdb_root=str(imfdb_root),
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
    if trained.get("recipe") == "embedding":
        print(f"\ntrained heads on the face trunk in {trained['seconds']}s (person-grouped cross-validation):")
        print(format_heads(trained["heads"]))
    else:
        score = trained["best_score"]
        scored = (
            f"validation score {score:.3f}" if score is not None else "val split too small to score: last epoch kept"
        )
        print(
            f"\ntrained {len(trained['epochs'])} epochs on {trained['device']}: best epoch {trained['best_epoch']}, "
            f"{scored}"
        )
    print(
        f"model:     {paths.model_dir}/model.pt + model.json\n"
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


def cmd_repro(args: argparse.Namespace) -> int:
    """``dvc repro``, or ``dvc exp run -S ...`` with the overrides of a params profile."""
    from faces_core import dvcrepo
    from flows.pipeline import lock_wait_s

    extra = [a for i, a in enumerate(args.dvc_args) if not (i == 0 and a == "--")]
    if args.profile:
        try:
            dvc_args = ["exp", "run", *profile_overrides(args.profile), *extra]
        except (FileNotFoundError, ValueError) as exc:
            print(f"faces repro: {exc}", file=sys.stderr)
            return 2
    else:
        dvc_args = ["repro", *extra]
    print("dvc " + " ".join(dvc_args), flush=True)
    try:
        rc, _ = dvcrepo.run_dvc(dvc_args, wait_s=lock_wait_s(), on_line=print)
    except (dvcrepo.DvcBusyError, dvcrepo.DvcNotFoundError) as exc:
        print(f"faces repro: {exc}", file=sys.stderr)
        return 1
    return rc


def profile_overrides(name: str, root: Path = Path(".")) -> list[str]:
    """``-S key=value`` arguments of ``dvc exp run`` for ``params-<name>.yaml``.

    A profile file maps dotted params.yaml keys to values (``train.epochs: 8``); applied with
    ``dvc exp run -S``, the experiment records them and params.yaml itself is not edited by hand.

    Raises:
        FileNotFoundError: No such profile file.
        ValueError: The file is not a mapping of dotted keys.
    """
    import yaml

    path = root / f"params-{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("params-") for p in root.glob("params-*.yaml"))
        raise FileNotFoundError(f"no profile {path}; profiles here: {', '.join(known) or 'none'}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and "." in k for k in data):
        raise ValueError(f"{path} must map dotted params keys to values, e.g. `train.epochs: 8`")
    args: list[str] = []
    for key, value in data.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args


def cmd_doctor(args: argparse.Namespace) -> int:
    from flows.doctor import run_from_args

    return run_from_args(args)


def cmd_ingest(args: argparse.Namespace) -> int:
    from flows.ingest import run_from_args

    return run_from_args(args)


def cmd_train(args: argparse.Namespace) -> int:
    from flows.train import run_from_args

    return run_from_args(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score an ingest split, or with ``--photos``/``--labels`` run the in-the-wild photo check."""
    from flows import evaluate_photos

    if evaluate_photos.wants_photos(args):
        return evaluate_photos.run_from_args(args)
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


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from flows import annotate as annotate_flow
    from flows import doctor as doctor_flow
    from flows import evaluate as evaluate_flow
    from flows import evaluate_photos
    from flows import ingest as ingest_flow
    from flows import sample as sample_flow
    from flows import serve as serve_flow
    from flows import train as train_flow

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
    demo.add_argument("--out", help=f"sample directory (implies --direct; default: {DEFAULT_SAMPLE_DIR})")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out-dir", help="output directory (implies --direct; default: params.yaml ingest.out_dir)")
    demo.add_argument("--raw-dir", help="image store (implies --direct; default: params.yaml ingest.raw_dir)")
    demo.add_argument("--epochs", type=int, default=2, help="--direct: training epochs (default: %(default)s)")
    demo.add_argument("--eval-split", default="all", help="--direct: split to evaluate on (default: %(default)s)")
    demo.add_argument("--no-train", action="store_true", help="--direct: stop after ingest")
    demo.add_argument(
        "--annotations", help="--direct: annotate output folder (default: params.yaml annotate.adhoc_out)"
    )
    demo.set_defaults(func=cmd_demo)

    repro = sub.add_parser(
        "repro",
        help="dvc repro (or dvc exp run with --profile), waiting for any other DVC call of ours",
        description="Without --profile: `dvc repro [ARGS]`. With --profile NAME: `dvc exp run -S key=value ... [ARGS]` "
        "with the overrides in params-NAME.yaml (e.g. imfdb: real IMFDB data, 8 epochs).",
    )
    repro.add_argument("--profile", help="params profile: params-<PROFILE>.yaml beside params.yaml")
    repro.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed on to dvc (after --)")
    repro.set_defaults(func=cmd_repro)

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
    predict.set_defaults(func=cmd_predict)

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
    """Run a parsed subcommand under the one stop path every command shares (:mod:`flows.stopping`)."""
    from flows.stopping import run_stoppable

    return run_stoppable(args.command, lambda: int(args.func(args)))


if __name__ == "__main__":
    raise SystemExit(main())
