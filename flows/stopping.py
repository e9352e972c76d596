"""A bound on how long a command takes to stop after Ctrl-C or SIGTERM.

A stop normally unwinds in about a second, but the unwinding waits on things a command does
not control: Prefect recording the stop through an API slow under load, a thread in a long
socket read. In a loaded test run a Ctrl-C once took over a minute, for ``faces ingest`` and
for ``faces serve`` alike. :func:`stop_signals` makes both signals exceptions, as Ctrl-C is,
and starts a :class:`StopDeadline` with the first one; each command says what a forced
stop does (ingest finishes a commit in progress and exits ``128 + signal``; serve kills its
server).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


class StopDeadline:
    """Calls ``on_expire(signum, grace_s)`` ``grace_s`` seconds after :meth:`arm`, unless
    :meth:`disarm` comes first.

    Args:
        grace_s: Seconds the command may take to wind down by itself.
        on_expire: Ends the process (it should not return).
        guard: Held while deciding and calling ``on_expire``, so work done under it (a
            dataset commit) completes first; a disarm meanwhile cancels the forced stop.
    """

    def __init__(
        self,
        grace_s: float,
        on_expire: Callable[[int, float], None],
        guard: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        self.grace_s = grace_s
        self.on_expire = on_expire
        self.guard = guard if guard is not None else contextlib.nullcontext()
        self._armed = False
        self._done = threading.Event()

    def arm(self, signum: int) -> None:
        """Start the countdown (once: later signals do not restart it)."""
        if self._armed:
            return
        self._armed = True
        self._done.clear()
        threading.Thread(target=self._wait, args=(signum,), name="stop-deadline", daemon=True).start()

    def disarm(self) -> None:
        """The command ended by itself: no forced stop."""
        self._done.set()
        self._armed = False

    def _wait(self, signum: int) -> None:
        if self._done.wait(self.grace_s):
            return
        with self.guard:
            if not self._done.is_set():
                self.on_expire(signum, self.grace_s)


@contextlib.contextmanager
def stop_signals(deadline: StopDeadline, on_sigterm: Callable[[int], BaseException]) -> Iterator[None]:
    """While inside: Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM raises ``on_sigterm(signum)``,
    each first arming ``deadline``. On leaving, the deadline is disarmed and the previous
    handlers are back. Outside the main thread, signals are left alone.
    """

    def interrupt(signum: int, frame: object) -> None:
        deadline.arm(signum)
        raise KeyboardInterrupt

    def terminate(signum: int, frame: object) -> None:
        deadline.arm(signum)
        raise on_sigterm(signum)

    previous: dict[int, Any] = {}
    try:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, terminate)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        deadline.disarm()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
