"""One stop path for every command: a bound on how long it takes to end after Ctrl-C or SIGTERM.

A stop normally unwinds in about a second, but the unwinding waits on things a command does
not control: Prefect recording the stop through an API slow under load, a Prefect task thread
blocked in a long read (a TCS file dripping from a slow server kept ``faces ingest`` alive for
minutes after SIGTERM), the interpreter joining worker threads at exit.

:func:`stop_signals` makes both signals exceptions, as Ctrl-C is, and starts a
:class:`StopDeadline` with the first one. Two things make the bound hold whatever is blocked:

- **The deadline is armed by the signal itself**, not only by our Python handler. While a
  Prefect flow runs, Prefect swaps in its own SIGTERM handler and hands the signal back only
  once its engine has unwound, which is exactly the part that can hang. A wakeup file
  descriptor (:func:`signal.set_wakeup_fd`) is written by the interpreter for every signal
  whatever handler is installed; a small thread reads it and arms the deadline.
- **Once armed it stays armed until the process ends**: leaving the block does not cancel
  it, so threads joined at interpreter exit cannot hold the process either.

Each command says what a forced stop does: ingest finishes a commit in progress and exits
``128 + signal``; serve kills its server; the others (:func:`command_stop`) exit
``128 + signal`` with one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from faces_core.cancel import COMMIT_GUARD, STOP_REQUESTED

STOP_GRACE_S: Final = 10.0
"""Seconds within which every command has ended after Ctrl-C or SIGTERM."""

FORCE_AFTER_S: Final = STOP_GRACE_S - 2.0
"""Seconds a stopped command may take to wind down by itself before the deadline ends the
process; the rest of :data:`STOP_GRACE_S` is for the forced exit itself (a commit in progress
completing, output flushed)."""

_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


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
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        """Whether a stop signal started the countdown."""
        return self._armed

    def arm(self, signum: int) -> None:
        """Start the countdown (once: later signals do not restart it)."""
        with self._lock:
            if self._armed:
                return
            self._armed = True
            self._done.clear()
        threading.Thread(target=self._wait, args=(signum,), name="stop-deadline", daemon=True).start()

    def disarm(self) -> None:
        """The command ended by itself: no forced stop."""
        with self._lock:
            self._done.set()
            self._armed = False

    def _wait(self, signum: int) -> None:
        if self._done.wait(self.grace_s):
            return
        with self.guard:
            if not self._done.is_set():
                self.on_expire(signum, self.grace_s)


class _SignalWatch:
    """Arms the innermost active deadline for every SIGINT/SIGTERM the process receives.

    The interpreter writes the number of each signal it catches to the wakeup descriptor
    before any Python handler runs, Prefect's included; this thread turns those bytes into
    :meth:`StopDeadline.arm`. Process-wide: installed by the outermost :func:`stop_signals`
    of the main thread, removed (the previous descriptor restored) by it.
    """

    def __init__(self) -> None:
        self.deadlines: list[StopDeadline] = []
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(True)
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="stop-signal-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in _STOP_SIGNALS:
                    STOP_REQUESTED.set()
                    if self.deadlines:
                        self.deadlines[-1].arm(signum)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(self._previous_fd)
        with contextlib.suppress(OSError):
            self._writer.shutdown(socket.SHUT_RDWR)
        self._writer.close()
        self._thread.join(timeout=1.0)
        self._reader.close()


_watch: _SignalWatch | None = None


@contextlib.contextmanager
def stop_signals(deadline: StopDeadline, on_sigterm: Callable[[int], BaseException]) -> Iterator[None]:
    """While inside: Ctrl-C raises ``KeyboardInterrupt`` and SIGTERM raises ``on_sigterm(signum)``,
    and either signal arms ``deadline`` (even while Prefect's own SIGTERM handler is installed).

    On leaving, the previous handlers are back. The deadline is disarmed only if no signal
    came: after a stop it keeps running until the process ends, so nothing the interpreter
    waits for at exit can keep a stopped command alive past ``deadline.grace_s``. Nested
    blocks arm only the innermost deadline. Outside the main thread, signals are left alone.
    """
    global _watch

    def interrupt(signum: int, frame: object) -> None:
        STOP_REQUESTED.set()
        deadline.arm(signum)
        raise KeyboardInterrupt

    def terminate(signum: int, frame: object) -> None:
        STOP_REQUESTED.set()
        deadline.arm(signum)
        raise on_sigterm(signum)

    previous: dict[int, Any] = {}
    owns_watch = False
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, terminate)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
        if _watch is None:
            _watch = _SignalWatch()
            owns_watch = True
        _watch.deadlines.append(deadline)
    try:
        yield
    finally:
        if not deadline.armed:
            deadline.disarm()
        if _watch is not None and previous:
            with contextlib.suppress(ValueError):
                _watch.deadlines.remove(deadline)
            if owns_watch:
                _watch.close()
                _watch = None
                STOP_REQUESTED.clear()  # the stopped command is over (an in-process caller goes on)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_now(code: int, grace_s: float = 1.0) -> None:
    """End the process at once (the deadline's last step), and the processes it started.

    ``os._exit`` skips the clean-up that would stop child processes: the temporary Prefect
    server a command starts (a uvicorn process) was left running after a forced stop. So
    every child gets SIGTERM, then SIGKILL after ``grace_s``, before the process ends.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    children = child_pids()
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while children and time.monotonic() < deadline:
        children = [pid for pid in children if _alive(pid)]
        time.sleep(0.05)
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os._exit(code)


def child_pids(parent: int | None = None) -> list[int]:
    """Processes whose parent is ``parent`` (default: this one), from /proc; none without /proc."""
    parent = os.getpid() if parent is None else parent
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has ended: only its parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _alive(pid: int) -> bool:
    """Whether our child ``pid`` still runs; one that has ended is reaped here so it does not count."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return running(pid)


def command_stop(
    command: str,
    grace_s: float = FORCE_AFTER_S,
    guard: contextlib.AbstractContextManager[Any] = COMMIT_GUARD,
    message: Callable[[int], str] | None = None,
) -> contextlib.AbstractContextManager[None]:
    """The stop path of a command: SIGTERM raises ``TerminationSignal`` (as Prefect's handler
    does), and a wind-down that outlasts ``grace_s`` prints ``message(signum)`` (default:
    ``faces <command>: stopped by <SIGNAL>``) and exits ``128 + signal``.
    """
    from prefect.exceptions import TerminationSignal

    def forced_exit(signum: int, grace: float) -> None:
        said = message(signum) if message is not None else f"faces {command}: stopped by {signal.Signals(signum).name}"
        print(f"{said} (forced after {grace:g} s of winding down)", file=sys.stderr, flush=True)
        exit_now(128 + signum)

    return stop_signals(StopDeadline(grace_s, forced_exit, guard=guard), TerminationSignal)


def stop_signal_of(exc: BaseException) -> int | None:
    """The signal number a stop exception stands for: SIGINT for Ctrl-C, the signal of a
    ``TerminationSignal``; None for anything else."""
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)
    if isinstance(exc, TerminationSignal):
        return int(exc.signal)
    return None


def run_stoppable(
    command: str, run: Callable[[], int], guard: contextlib.AbstractContextManager[Any] = COMMIT_GUARD
) -> int:
    """Run a command under the stop path every command shares: Ctrl-C or SIGTERM ends it with
    one line and exit status ``128 + signal`` within :data:`STOP_GRACE_S`, whatever it is
    blocked on. ``guard`` (a dataset commit lock) is completed before a forced exit. Commands
    with a stop of their own (ingest, serve) nest theirs inside and print their own line.
    """
    with command_stop(command, guard=guard):
        try:
            return run()
        except BaseException as exc:
            signum = stop_signal_of(exc)
            if signum is None:
                raise
            print(
                f"faces {command}: stopped by {signal.Signals(signum).name}; what was committed before the stop is "
                "kept (annotate: finished shards; train: the last checkpoint, use --resume): run the same command "
                "again to go on.",
                file=sys.stderr,
                flush=True,
            )
            return 128 + signum
