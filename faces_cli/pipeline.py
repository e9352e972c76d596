"""``python -m flows.pipeline [STAGE ...] [--force]``: the pipeline flow from a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from faces_cli import setup_logging, stopping
from faces_core import dvcrepo
from flows.pipeline import pipeline


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.pipeline [STAGE ...] [--force]``."""
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description="dvc repro inside a Prefect flow.")
    parser.add_argument("targets", nargs="*", help="stages to reproduce (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        result = pipeline(targets=args.targets, force=args.force)
    except (RuntimeError, dvcrepo.DvcBusyError, dvcrepo.DvcNotFoundError) as exc:
        print(f"faces pipeline: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def command() -> int:
    """``python -m flows.pipeline`` under the stop path every command shares."""
    return stopping.run_stoppable("pipeline", main)
