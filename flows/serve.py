"""Serve the deployments (``ingest``, ``train``, ``evaluate``, ``annotate``, ``annotate-inbox``) to a Prefect server.

Start a server (``prefect server start``), point ``PREFECT_API_URL`` at it, run
``faces serve`` (or ``python -m flows.serve``) and trigger runs with
``prefect deployment run ingest/ingest`` (or ``train/train``, ``evaluate/evaluate``,
``annotate/annotate``); they show up in the UI at http://127.0.0.1:4200. ``annotate-inbox`` runs
by itself every ``annotate.inbox.interval_s`` seconds.

When params.yaml still points ingest at the bundled sample (written by ``faces sample``),
this process also starts the loopback image server that answers the sample's image URLs
(their host does not exist, like the real TCS hosts) and hands it to the deployment as its
``proxy`` parameter, so ``prefect deployment run ingest/ingest`` works out of the box.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from faces_core.sample.tcs import PLAN_NAME, load_routes
from faces_core.testing import LoopbackServer
from flows.annotate import annotate, annotate_inbox
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.params import annotate_config, ingest_inputs
from flows.train import train

log = logging.getLogger(__name__)


def sample_image_server(tcs: str | None) -> LoopbackServer | None:
    """Start a proxy that answers the bundled sample's image URLs, if ``tcs`` is the sample."""
    if not tcs or not (Path(tcs).parent / PLAN_NAME).is_file():
        return None
    server = LoopbackServer(load_routes(Path(tcs).parent)).start()
    log.info("serving the sample's TCS images through proxy %s", server.proxy_url)
    return server


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(prog="faces serve", description="Serve the faces deployments to PREFECT_API_URL.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``faces serve``."""
    parser.add_argument("--limit", type=int, default=None, help="max concurrent flow runs")
    parser.add_argument("--no-sample-images", action="store_true", help="do not start the sample image proxy")


def build_deployments(ingest_parameters: dict[str, str] | None = None) -> list[RunnerDeployment]:
    """Every deployment ``faces serve`` serves; ``annotate-inbox`` on its params.yaml interval."""
    _, _, inbox = annotate_config()
    # Sync context: to_deployment returns the deployment itself, not a coroutine.
    return [
        cast(RunnerDeployment, ingest.to_deployment(name="ingest", parameters=ingest_parameters or {}, tags=["faces"])),
        cast(RunnerDeployment, train.to_deployment(name="train", tags=["faces"])),
        cast(RunnerDeployment, evaluate.to_deployment(name="evaluate", tags=["faces"])),
        cast(RunnerDeployment, annotate.to_deployment(name="annotate", tags=["faces"])),
        cast(
            RunnerDeployment,
            annotate_inbox.to_deployment(
                name="annotate-inbox", interval=timedelta(seconds=inbox.interval_s), tags=["faces"]
            ),
        ),
    ]


def run_from_args(args: argparse.Namespace) -> int:
    """Build the deployments and block serving them."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parameters: dict[str, str] = {}
    server = None if args.no_sample_images else sample_image_server(ingest_inputs()["tcs"])
    if server is not None:
        parameters["proxy"] = server.proxy_url
    deployments = build_deployments(parameters)
    try:
        serve(*deployments, limit=args.limit)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
