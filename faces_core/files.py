"""Opening input files safely: regular files only, checked on the open descriptor.

A FIFO named like a crop, an annotation ``.txt`` or a photo blocks ``open()`` until a writer
comes, which may be never (an ingest waited for ever; SIGTERM then needed minutes). A
character device (``/dev/zero``) never ends. :func:`open_regular` opens without blocking
(``O_NONBLOCK`` makes a FIFO's open return at once), looks at what it opened with ``fstat``
(no window between a check and the open), and refuses anything but a regular file with
:class:`NotRegularFileError`, an ``OSError``: callers that already turn unreadable files into
``unreadable_file`` rejections need no other change.

Writing outputs: :func:`write_atomic` (and :func:`write_json`) replace a file whole or not at
all, and :func:`fsync_dir` makes a rename durable. Every stage writes through these, so a
kill never leaves half a metrics file, model or summary behind.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFileError(OSError):
    """The path is a directory, FIFO, socket or device where a file was expected."""


class FileTooLargeError(OSError):
    """A regular file larger than the cap its reader allows: refused unread (``too_large``)."""


def kind_of(mode: int) -> str:
    """``a FIFO (named pipe)``, ``a directory``... for a non-regular ``st_mode``."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str]) -> io.BufferedReader:
    """Open ``path`` for binary reading if, and only if, it is a regular file.

    Raises:
        NotRegularFileError: It is something else (never blocks, never opened for reading).
        OSError: It cannot be opened at all (missing, permissions, a dangling link).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"{kind_of(mode)}, not a regular file", os.fspath(path))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of a regular file, refused past ``limit`` bytes (when given).

    Raises:
        NotRegularFileError: Not a regular file.
        FileTooLargeError: Larger than ``limit`` (``EFBIG``; nothing read).
        OSError: Unreadable.
    """
    with open_regular(path) as fh:
        if limit is not None:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise FileTooLargeError(errno.EFBIG, f"{size} bytes, more than the {limit} allowed", os.fspath(path))
        return fh.read()


def write_atomic(path: str | os.PathLike[str], data: bytes, durable: bool = False) -> Path:
    """Replace ``path`` with ``data`` whole or not at all: a temporary file in the same folder,
    then a rename. The temporary is unique per process and thread and removed on any failure.

    Args:
        path: File to write (parents are created).
        data: Its new content.
        durable: Also ``fsync`` the file before the rename (models and checkpoints: a power
            cut must not leave an empty file under the final name).
    """
    return write_atomic_with(path, lambda tmp: tmp.write_bytes(data), durable)


def write_atomic_with(
    path: str | os.PathLike[str],
    write: Callable[[Path], object],
    durable: bool = False,
    tmp_name: str | None = None,
) -> Path:
    """The one temporary-then-rename every writer of a whole file uses (JSON, Parquet, JPEG).

    Args:
        path: File to write (parents are created).
        write: Writes the content to the temporary path it is given.
        durable: ``fsync`` the file before the rename.
        tmp_name: Name of the temporary in the same folder (default: hidden, unique per process
            and thread); a writer whose recovery sweeps its own prefix names it.

    Raises:
        Whatever ``write`` or the rename raised; the temporary is removed either way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name or f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` as indented JSON (one final newline) with :func:`write_atomic`."""
    return write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def fsync_dir(path: str | os.PathLike[str], best_effort: bool = False) -> None:
    """Persist renames in ``path``: the directory entry must reach disk too.

    Args:
        path: The folder the renamed files are in.
        best_effort: Ignore an ``OSError`` (a platform or filesystem that cannot open or
            fsync a folder) instead of raising it: for the image store, whose files are
            re-verified by hash on the next run, so a lost rename costs only a re-download.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not best_effort:
            raise


def flock_wait(fd: int, wait_s: float, on_busy: Callable[[], None] | None = None, poll_s: float = 0.1) -> bool:
    """Take an exclusive ``flock`` on ``fd``, polling up to ``wait_s`` seconds while another holds it.

    The kernel drops an flock with its holder's last descriptor, even on SIGKILL, so a lock
    file left behind never blocks anyone. Used by every lock of ours (an output folder, the
    DVC repository).

    Args:
        fd: An open descriptor of the lock file.
        wait_s: Seconds to keep trying; 0 tries once.
        on_busy: Called once, when the first try finds the lock held (to say we wait).
        poll_s: Seconds between tries.

    Returns:
        True once held; False if it was still held by another at the deadline.
    """
    deadline = time.monotonic() + max(0.0, wait_s)
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            if on_busy is not None and not told:
                on_busy()
                told = True
            time.sleep(poll_s)
