"""``faces train``, ``python -m flows.train`` and ``torchrun -m flows.train``: flags, input checks,
the line each rank prints. Under torchrun only rank 0 goes through the Prefect flow
(:func:`flows.train.train`); the other ranks run the same loop without Prefect."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from faces_cli import options, setup_logging, stopping
from faces_core import objstore
from faces_core.facechip import FaceModelsMissingError
from faces_core.fernet import FerWeightsMissingError
from faces_core.storage import FACES_DIR
from faces_core.train import loop
from flows import runner
from flows.train import train, train_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the train command (``faces train`` and ``python -m flows.train``)."""
    parser.add_argument("--data", dest="data_dir", help="ingest out_dir (default: params.yaml train.data_dir)")
    parser.add_argument("--model-dir", help="model output dir (default: params.yaml train.model_dir)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--backbone")
    parser.add_argument("--weights", help="imagenet, a local .pth file, or none")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument(
        "--recipe",
        choices=("embedding", "cnn"),
        help="embedding: heads on the face trunk, chosen by person-grouped CV; cnn: fine-tune --backbone "
        "(default: params.yaml train.recipe)",
    )
    options.add_runner_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Train with parsed flags; under torchrun only rank 0 goes through Prefect."""
    setup_logging()
    kwargs = {
        "data_dir": args.data_dir,
        "model_dir": args.model_dir,
        "epochs": args.epochs,
        "backbone": args.backbone,
        "weights": args.weights,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": args.device,
        "resume": args.resume,
        "recipe": args.recipe,
    }
    try:
        data_dir, _, _ = train_config(data_dir=args.data_dir, model_dir=args.model_dir)
    except ValueError as exc:
        print(f"faces train: {exc}", file=sys.stderr)
        return 2
    if objstore.is_remote(data_dir):
        try:
            committed = objstore.read_manifest(data_dir) is not None
        except (objstore.LocationError, OSError) as exc:
            print(f"faces train: cannot read {objstore.shown(data_dir)}: {exc}", file=sys.stderr)
            return 2
        if not committed:
            print(
                f"faces train: nothing committed at {objstore.shown(data_dir)}: run `faces ingest --out-dir` "
                "with that URL first",
                file=sys.stderr,
            )
            return 2
    elif not (Path(data_dir) / FACES_DIR).is_dir():
        print(
            f"faces train: no ingest output at {data_dir} (no {FACES_DIR}/ inside): run `faces ingest` first, "
            "or pass --data DIR / set train.data_dir in params.yaml",
            file=sys.stderr,
        )
        return 2
    try:
        recipe = train_config(data_dir=args.data_dir, recipe=args.recipe)[1].recipe
    except ValueError as exc:
        print(f"faces train: {exc}", file=sys.stderr)
        return 2
    if recipe == "embedding" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print(
            "faces train: train.recipe is embedding (heads on a frozen trunk, one process, minutes on a CPU); "
            "torchrun is for train.recipe: cnn. Run `faces train` without torchrun.",
            file=sys.stderr,
        )
        return 2
    try:
        if int(os.environ.get("RANK", "0")) != 0:
            resume = kwargs.pop("resume")
            other = loop.train(*train_config(**kwargs), resume=bool(resume))
            print(_rank_line(other.world_size, other.steps, other.weights_digest), file=sys.stderr)
            return 0
        try:
            flow_ = runner.with_runner(train, options.runner_from_args(args))
        except ValueError as exc:
            print(f"faces train: {exc}", file=sys.stderr)
            return 2
        result = flow_(**kwargs)
    except loop.NoTrainingStepsError as exc:
        print(f"faces train (rank {os.environ.get('RANK', '0')}): {exc}", file=sys.stderr)
        return 1
    except loop.TrainInputError as exc:
        print(f"faces train: {exc}", file=sys.stderr)
        return 2
    except (FaceModelsMissingError, FerWeightsMissingError) as exc:  # the message says what to install
        print(f"faces train: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        print(
            f"faces train: cannot write {exc.filename or 'an output'} ({os.strerror(exc.errno or 0)}): free some "
            "space or point train.model_dir / train.checkpoint_dir (--model-dir) at a writable filesystem with room; "
            "the previous model is unchanged",
            file=sys.stderr,
        )
        return 1
    if result.get("recipe") == "embedding":
        print(json.dumps({k: result[k] for k in ("recipe", "model", "weights_sha256", "seconds", "heads")}, indent=2))
        return 0
    print(_rank_line(result["world_size"], result["steps"], result["weights_sha256"]), file=sys.stderr)
    best = result["epochs"][-1] if result["epochs"] else {}
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"} | {"last_epoch": best}, indent=2))
    return 0


_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})
"""A full or read-only disk under the model or checkpoint folder: one line, not a traceback."""


def _rank_line(world_size: int, steps: int, digest: str) -> str:
    """What this process trained: under torchrun, equal digests show the ranks stayed in step."""
    rank = os.environ.get("RANK", "0")
    return f"faces train: rank {rank} of {world_size}: {steps} optimizer steps, weights sha256 {digest}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.train [--epochs N] [--resume] ...``."""
    parser = argparse.ArgumentParser(prog="faces train", description="Train the multi-task face-attribute model.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def command() -> int:
    """``python -m flows.train`` under the stop path every command shares."""
    return stopping.run_stoppable("train", main)
