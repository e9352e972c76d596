"""``faces serve`` (``python -m flows.serve``): a local Prefect server when none is set, the sample's
image proxy, then every deployment of :mod:`flows.serve` served until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
from prefect import serve
from prefect.settings import PREFECT_API_URL, temporary_settings

from faces_cli import options, setup_logging, stopping
from faces_cli.ingest import sample_host_proxies, sample_image_server
from faces_cli.stopping import FORCE_AFTER_S, StopDeadline, exit_now, stop_signals
from faces_core import doctor
from faces_core.testing import LoopbackServer
from flows import runner
from flows.params import load_params
from flows.params.ingest import ingest_inputs
from flows.serve import build_deployments

SERVER_START_TIMEOUT_S = 120.0


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def local_server(port: int, timeout_s: float = SERVER_START_TIMEOUT_S) -> Iterator[str]:
    """A Prefect server on 127.0.0.1:``port``: the one already there, else one started for us.

    The started server is stopped (SIGTERM to its process group) on exit.

    Yields:
        Its API URL (``http://127.0.0.1:<port>/api``).

    Raises:
        RuntimeError: It did not answer within ``timeout_s`` (the message holds its output).
    """
    api_url = f"http://127.0.0.1:{port}/api"
    if _healthy(api_url):
        print(f"Using the Prefect server already running at {api_url}", flush=True)
        warn_if_ui_elsewhere(api_url)
        yield api_url
        return
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The UI's pages call the API at this URL; its default names port 4200 whatever the port.
    env.setdefault("PREFECT_UI_API_URL", api_url)
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    cmd = [prefect if os.path.exists(prefect) else "prefect", "server", "start", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # our Ctrl-C handling stops it after the runs, not before
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(api_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
                raise RuntimeError(
                    f"the Prefect server on port {port} did not start (exit status {proc.poll()}): {out[-2000:]}\n"
                    "Is the port taken by something else? Pick another with `faces serve --port N`."
                )
            time.sleep(0.5)
        print(f"Started a Prefect server: UI at http://127.0.0.1:{port}, API at {api_url}", flush=True)
        _FORCED_STOPS.append(lambda: os.killpg(proc.pid, signal.SIGKILL))
        yield api_url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print("Stopped the Prefect server.", flush=True)


def warn_if_ui_elsewhere(api_url: str) -> None:
    """Say so, with the variable to set, when the server's UI calls another API URL.

    A server started by hand on another port (``prefect server start --port 4201``) serves a
    UI whose pages call ``:4200/api``: runs work, the UI stays blank.
    """
    finding = doctor.check_ui(api_url)
    if finding.status == "problem":
        print(f"WARNING: {finding.message}\n  fix: {finding.fix}", file=sys.stderr, flush=True)


_FORCED_STOPS: list[Callable[[], None]] = []
"""How to end what this process started (the local server), when a stop is forced."""


STOP_GRACE_S = FORCE_AFTER_S
"""Seconds ``faces serve`` may take to wind down after Ctrl-C or SIGTERM before it ends anyway
(the same bound as every command: :mod:`faces_cli.stopping`)."""


def _force_stop(signum: int, grace_s: float) -> None:
    """End ``faces serve`` whose wind-down outlasted ``grace_s`` (a :class:`~faces_cli.stopping.StopDeadline`).

    Prefect's runner winds down through its API (it pauses the schedules, cancels runs); an
    API slow under load once kept a Ctrl-C waiting over a minute. The local server is killed
    and the command ends with the usual last line.
    """
    print(f"faces serve: the runner did not wind down within {grace_s:g} s; ending it.", flush=True)
    for stop in _FORCED_STOPS:
        with contextlib.suppress(OSError):
            stop()
    if _FORCED_STOPS:
        print("Stopped the Prefect server.", flush=True)
    print("faces serve: stopped.", flush=True)
    exit_now(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``faces serve``."""
    parser.add_argument(
        "--limit", type=int, default=None, help="max concurrent flow runs (1: runs that share one GPU take turns)"
    )
    parser.add_argument("--no-sample-images", action="store_true", help="do not start the sample image proxy")
    parser.add_argument("--port", type=int, help="port of the local Prefect server (default: params.yaml serve.port)")
    parser.add_argument(
        "--pipeline-every",
        type=float,
        metavar="SECONDS",
        help="run the pipeline deployment on this interval (default: params.yaml serve.pipeline_interval_s; 0 = never)",
    )
    options.add_runner_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Serve every deployment until Ctrl-C (or SIGTERM); 0 on a clean stop."""
    setup_logging()
    section = load_params().get("serve") or {}
    try:
        runner_settings = options.runner_from_args(args)
    except ValueError as exc:
        print(f"faces serve: {exc}", file=sys.stderr)
        return 2
    interval = args.pipeline_every if args.pipeline_every is not None else float(section.get("pipeline_interval_s", 0))
    port = args.port or int(section.get("port", 4200))
    # SIGTERM stops like Ctrl-C; a wind-down that hangs is ended after STOP_GRACE_S.
    stopping = stop_signals(StopDeadline(STOP_GRACE_S, _force_stop), lambda signum: KeyboardInterrupt())
    try:
        with stopping, contextlib.ExitStack() as stack:
            api_url = PREFECT_API_URL.value()
            if api_url:
                warn_if_ui_elsewhere(api_url)
            if not api_url:
                api_url = stack.enter_context(local_server(port))
                os.environ["PREFECT_API_URL"] = api_url  # for the flow-run processes
                stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
            parameters: dict[str, Any] = {}
            images: LoopbackServer | None = None
            if not args.no_sample_images:
                images = sample_image_server(ingest_inputs()["tcs"])
            if images is not None:
                stack.callback(images.stop)
                # Only the sample's host goes there: a user's http_proxy still carries the rest.
                parameters["host_proxies"] = sample_host_proxies(images, ingest_inputs()["tcs"])
            runner.export(runner_settings)  # the flow-run processes declare their task runner from it
            deployments = build_deployments(parameters, interval)
            print(f"Serving {', '.join(d.name for d in deployments)} to {api_url}; Ctrl-C stops.", flush=True)
            serve(*deployments, limit=args.limit)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"faces serve: {exc}", file=sys.stderr)
        return 1
    finally:
        _FORCED_STOPS.clear()
    print("faces serve: stopped.", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the deployments until interrupted."""
    parser = argparse.ArgumentParser(prog="faces serve", description="Serve every faces deployment.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def command() -> int:
    """``python -m flows.serve`` under the stop path every command shares."""
    return stopping.run_stoppable("serve", main)
