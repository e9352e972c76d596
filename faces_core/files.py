"""Opening input files safely: regular files only, checked on the open descriptor.

A FIFO named like a crop, an annotation ``.txt`` or a photo blocks ``open()`` until a writer
comes, which may be never (an ingest waited for ever; SIGTERM then needed minutes). A
character device (``/dev/zero``) never ends. :func:`open_regular` opens without blocking
(``O_NONBLOCK`` makes a FIFO's open return at once), looks at what it opened with ``fstat``
(no window between a check and the open), and refuses anything but a regular file with
:class:`NotRegularFileError`, an ``OSError``: callers that already turn unreadable files into
``unreadable_file`` rejections need no other change.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat

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
