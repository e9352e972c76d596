"""``faces doctor``: explain the common failures, each with its fix.

Checks the Prefect server (PREFECT_API_URL), whether its UI calls that API, a proxy that
would capture the loopback API calls, runs left Late because no ``faces serve`` polls, DVC's
repository lock, annotate outputs inside DVC's outputs, the trained model and the ingest
Parquet's schema. Exit status 0 when no check finds a problem, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict

from faces_core import doctor
from flows import NO_PROXY_AT_START
from flows.params import load_params
from flows.params.annotate import annotate_config
from flows.params.evaluate import evaluate_config
from flows.params.ingest import ingest_settings

MARKS = {"ok": "ok     ", "note": "note   ", "problem": "PROBLEM"}


def api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def findings(root: str = ".") -> list[doctor.Finding]:
    """Run every check for the project in ``root``."""
    params = load_params()
    url = api_url()
    user_env = {k: v for k, v in os.environ.items() if k not in ("no_proxy", "NO_PROXY")} | NO_PROXY_AT_START
    model_dir = evaluate_config(params)[0].model_dir
    paths, _, inbox = annotate_config(params)
    return [
        doctor.check_server(url),
        doctor.check_ui(url),
        doctor.check_proxy(user_env, url),
        doctor.check_serve(url),
        doctor.check_dvc_lock(root),
        doctor.check_outputs({"annotate.inbox.out": inbox.out, "annotate.adhoc_out": paths["adhoc_out"]}),
        doctor.check_model(model_dir),
        doctor.check_parquet(ingest_settings(params).out_dir),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``faces doctor``."""
    parser.add_argument("--json", action="store_true", help="one JSON object per check")


def run_from_args(args: argparse.Namespace) -> int:
    """Print each finding with its fix; 1 if any is a problem."""
    results = findings()
    for f in results:
        if args.json:
            print(json.dumps(asdict(f)))
            continue
        print(f"{MARKS[f.status]} {f.check:9} {f.message}")
        if f.fix and f.status != "ok":
            print(f"{'':17} fix: {f.fix}")
    return 1 if any(f.status == "problem" for f in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m faces_cli.doctor [--json]``."""
    parser = argparse.ArgumentParser(prog="faces doctor", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    from faces_cli.stopping import run_stoppable

    raise SystemExit(run_stoppable("doctor", main))
