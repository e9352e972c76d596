"""Stop a command-line ingest promptly, with a clear message, when its Prefect API goes away.

Kept out of the flow module (which is wiring): it ends the process, so it lives beside the
other stop machinery of the command line (:mod:`faces_cli.stopping`).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx

from faces_cli.stopping import exit_now
from faces_core.cancel import COMMIT_GUARD
from faces_core.storage import SUMMARY_FILE

API_GRACE_S = 10.0
"""Seconds the Prefect API may stay unreachable before a command-line run stops."""


class ApiWatchdog:
    """Stop a command-line run promptly, with a clear message, when its Prefect API goes away.

    Without it, every Prefect API call of the run retries with exponential backoff: a run
    whose server died took almost 4 minutes to fail, with a page of tracebacks. The
    watchdog polls ``<api>/health`` and, after ``grace_s`` seconds without an answer, prints
    what happened and what to do, then ends the process. It first takes
    :data:`~faces_core.cancel.COMMIT_GUARD`, so a commit in progress completes:
    the output directory holds the previous dataset or this run's complete one, and the
    message says which. A run without ``PREFECT_API_URL`` (temporary in-process server)
    needs no watchdog.

    Args:
        api_url: ``PREFECT_API_URL``; None or "" disables the watchdog.
        out_dir: The run's output directory (named in the message).
        grace_s: Seconds of failed health checks before stopping.
        interval_s: Seconds between health checks.
    """

    def __init__(self, api_url: str | None, out_dir: str, grace_s: float = API_GRACE_S, interval_s: float = 1.0):
        self.api_url = (api_url or "").rstrip("/")
        self.out_dir = out_dir
        self.grace_s = grace_s
        self.interval_s = interval_s
        self._started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="prefect-api-watchdog", daemon=True)

    def __enter__(self) -> ApiWatchdog:
        if self.api_url:
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=min(2.0, self.interval_s * 2)).status_code < 500
        except httpx.HTTPError:
            return False

    def _watch(self) -> None:
        down_since: float | None = None
        while not self._stop.wait(self.interval_s):
            if self._healthy():
                down_since = None
                continue
            down_since = down_since if down_since is not None else time.monotonic()
            if time.monotonic() - down_since >= self.grace_s:
                self._abort()

    def _abort(self) -> None:
        with COMMIT_GUARD:
            if self._stop.is_set():
                return  # the run ended meanwhile
            summary = Path(self.out_dir) / SUMMARY_FILE
            committed = summary.exists() and summary.stat().st_mtime >= self._started
            outputs = (
                f"{self.out_dir} holds this run's complete dataset; only its Prefect run record is incomplete"
                if committed
                else f"{self.out_dir} still holds the previous dataset"
            )
            print(
                f"\nfaces ingest: lost the Prefect API at {self.api_url} (no answer for {self.grace_s:g} s), so the run "
                f"was stopped; {outputs}. Start the server again (`prefect server start`) and re-run, or unset "
                "PREFECT_API_URL to run with a temporary local server.",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            exit_now(1)
