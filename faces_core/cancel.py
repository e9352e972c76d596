"""A process-wide "stop requested" flag that long loops in worker threads look at.

A signal reaches only the main thread. A Prefect task running in a task-runner thread (the TCS
file streaming from a slow server, a long parse) would otherwise go on until it ends by
itself, and the flow engine waits for it before the command can exit. The command's stop
path (``faces_cli/stopping.py``) sets :data:`STOP_REQUESTED` with the first Ctrl-C or SIGTERM;
loops call :func:`raise_if_stopping` between chunks and end within one chunk's time.
"""

from __future__ import annotations

import threading
from typing import Final

COMMIT_GUARD: Final = threading.Lock()
"""Held while a dataset commit runs: code that must end the process abruptly (a stop deadline,
the API watchdog) takes it first, so a commit in progress finishes and readers never need a
recovery."""

STOP_REQUESTED: Final = threading.Event()
"""Set once the command is asked to stop; cleared when its stop scope ends."""


class StopRequested(RuntimeError):
    """The command is stopping: this thread's work was abandoned (nothing was committed)."""


def raise_if_stopping(what: str) -> None:
    """Raise :class:`StopRequested` naming ``what`` was abandoned, if a stop was asked for."""
    if STOP_REQUESTED.is_set():
        raise StopRequested(f"{what} abandoned: the command is stopping")
