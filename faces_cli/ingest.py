"""``faces ingest`` and ``python -m flows.ingest``: flags, input checks, the sample's image proxy,
the stop path and the summary printed at the end. The pipeline itself is :func:`flows.ingest.ingest`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from prefect.exceptions import TerminationSignal
from prefect.settings import PREFECT_API_URL

from faces_cli import options, setup_logging, stopping
from faces_cli.watchdog import ApiWatchdog
from faces_core import objstore, report
from faces_core.ingest import pipeline as core
from faces_core.sample.tcs import PLAN_NAME, load_routes
from faces_core.storage import COMMIT_GUARD, OutputError
from faces_core.testing import LoopbackServer
from flows import runner
from flows.ingest import ingest
from flows.params.ingest import ingest_inputs, ingest_settings


def sample_image_server(tcs: str | None) -> LoopbackServer | None:
    """Start a proxy that answers the bundled sample's image URLs, if ``tcs`` is the sample.

    The sample's URLs name a host that does not exist (like the real TCS hosts), so an
    ingest of the sample needs this loopback proxy; ``faces ingest``, ``python -m
    flows.ingest`` (and so ``dvc repro``) and ``faces serve`` start it on their own. Real data
    has no ``routes.json`` beside its JSON, so nothing starts then.
    """
    if not tcs or not (Path(tcs).parent / PLAN_NAME).is_file():
        return None
    server = LoopbackServer(load_routes(Path(tcs).parent)).start()
    logging.getLogger(__name__).info("serving the sample's TCS images through proxy %s", server.proxy_url)
    return server


def sample_host_proxies(server: LoopbackServer | None, tcs: str | None) -> dict[str, str] | None:
    """Route only the sample's image host to its loopback server (``ingest``'s ``host_proxies``).

    Any proxy of the user's (``--proxy``, ``http_proxy``) still carries every other host; the
    sample's host does not exist anywhere, so no real proxy could answer for it (a demo under
    a corporate or dead proxy lost all its TCS faces that way).
    """
    if server is None or not tcs:
        return None
    host = json.loads((Path(tcs).parent / PLAN_NAME).read_text(encoding="utf-8"))["host"]
    name = urlsplit(host).hostname
    return {f"{scheme}://{name}": server.proxy_url for scheme in ("http", "https")} if name else None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.ingest [--tcs ...] [--imfdb-root ...]``."""
    parser = argparse.ArgumentParser(prog="faces ingest", description="Ingest face datasets into size-bucket Parquet.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the ingest command (shared by ``faces ingest`` and ``python -m flows.ingest``)."""
    parser.add_argument("--tcs", help="TCS JSON Lines file or URL ('' skips; default: params.yaml)")
    parser.add_argument("--imfdb-root", help="IMFDB_final directory ('' skips; default: params.yaml)")
    parser.add_argument("--out-dir", help="output directory (default: params.yaml ingest.out_dir)")
    parser.add_argument("--raw-dir", help="downloaded image store (default: params.yaml ingest.raw_dir)")
    parser.add_argument("--concurrency", type=int, help="parallel downloads")
    parser.add_argument("--shard-size", type=int, help="images per partition task")
    parser.add_argument("--workers", type=int, help="partition processes (0 = CPU cores)")
    parser.add_argument("--proxy", help="HTTP proxy for image downloads")
    parser.add_argument(
        "--no-sample-images",
        action="store_true",
        help="do not start the loopback proxy that serves the bundled sample's images",
    )
    options.add_runner_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the flow with parsed flags and print where the outputs are."""
    setup_logging()
    inputs = ingest_inputs(tcs=args.tcs, imfdb_root=args.imfdb_root)
    try:
        if not any(objstore.is_object_url(v) for v in inputs.values()):  # those are checked once fetched
            core.check_inputs(inputs["tcs"], inputs["imfdb_root"])
    except core.IngestInputError as exc:
        print(f"faces ingest: {exc}", file=sys.stderr)
        return 2
    settings = ingest_settings(out_dir=args.out_dir, raw_dir=args.raw_dir)
    try:
        flow_ = runner.with_runner(ingest, options.runner_from_args(args))
    except ValueError as exc:
        print(f"faces ingest: {exc}", file=sys.stderr)
        return 2
    images = None if getattr(args, "no_sample_images", False) else sample_image_server(inputs["tcs"])
    if args.proxy:
        # Through the environment, not as a flow parameter: parameters are stored in the
        # Prefect database and shown in the UI, and a proxy URL may carry a password.
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            os.environ[name] = args.proxy
    stopping = _stop_within(lambda signum: _stopped_message(signum, settings.raw_dir, settings.out_dir))
    try:
        with stopping, ApiWatchdog(PREFECT_API_URL.value(), settings.out_dir):
            summary = flow_(
                tcs=args.tcs,
                imfdb_root=args.imfdb_root,
                out_dir=args.out_dir,
                raw_dir=args.raw_dir,
                concurrency=args.concurrency,
                shard_size=args.shard_size,
                workers=args.workers,
                host_proxies=sample_host_proxies(images, inputs["tcs"]),
            )
    except (OutputError, core.NothingDownloadedError) as exc:
        print(f"faces ingest: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, TerminationSignal) as exc:
        signum = exc.signal if isinstance(exc, TerminationSignal) else signal.SIGINT
        print(_stopped_message(signum, settings.raw_dir, settings.out_dir), file=sys.stderr)
        return 128 + int(signum)
    finally:
        if images is not None:
            images.stop()
    print(report.format_summary(summary, settings.out_dir))
    return 0


def _stopped_message(signum: int, raw_dir: str, out_dir: str) -> str:
    return (
        f"faces ingest: stopped by {signal.Signals(signum).name}. Images downloaded so far are kept in "
        f"{raw_dir} and the previous dataset in {out_dir} is unchanged; run the same command again to resume."
    )


STOP_GRACE_S = stopping.FORCE_AFTER_S
"""Seconds a stopped run may take to wind down (Prefect records the stop, threads end) before
the process ends anyway (the command has ended within :data:`faces_cli.stopping.STOP_GRACE_S`)."""


def _stop_within(
    message: Callable[[int], str], grace_s: float = STOP_GRACE_S
) -> contextlib.AbstractContextManager[None]:
    """While inside: SIGTERM is an exception, as Ctrl-C is, and either ends the process within
    ``grace_s`` (:mod:`faces_cli.stopping`).

    Python's default SIGTERM action kills the process on the spot. Prefect swaps in its own
    handler while the flow runs (the download threads are cut and the run is marked crashed),
    then hands the signal back to this one, which ends the command with exit code 143 and a
    message instead of a bare kill. Should the wind-down hang, the deadline takes
    :data:`~faces_core.cancel.COMMIT_GUARD` (a commit in progress completes),
    prints ``message(signum)`` and exits ``128 + signal``.
    """

    return stopping.command_stop("ingest", grace_s, COMMIT_GUARD, message)


def command() -> int:
    """``python -m flows.ingest`` under the stop path every command shares."""
    return stopping.run_stoppable("ingest", main)
