"""Inbox folders: which files have finished arriving and may be annotated now.

A file being copied into an inbox grows until the copy ends. :func:`settled_files` looks at
every file twice, ``settle_s`` seconds apart, and keeps those whose size and modification
time did not change (and that are not empty); the others are left for the next scheduled
run. Files already annotated are skipped later by their content hash, so only what is new
costs anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from faces_core.annotate.inputs import FileJob, find_files
from faces_core.annotate.settings import InboxSettings  # noqa: F401  (re-exported)


def _look(jobs: Sequence[FileJob]) -> dict[str, tuple[int, int] | None]:
    seen: dict[str, tuple[int, int] | None] = {}
    for job in jobs:
        try:
            stat = os.stat(job.path)
            seen[job.path] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            seen[job.path] = None
    return seen


def settled_files(
    folders: Sequence[str | os.PathLike[str]],
    settle_s: float,
    exclude: Sequence[str | os.PathLike[str]] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[FileJob], list[FileJob]]:
    """Split the inbox files into settled ones and ones still arriving.

    Missing inbox folders are created (a fresh install has an empty inbox, not an error).

    Args:
        folders: Inbox folders.
        settle_s: Seconds between the two looks.
        exclude: Folders not to enter (the output folder).
        sleep: How to wait between the looks.

    Returns:
        (settled, still arriving): a file is settled when it has content and its size and
        modification time were the same at both looks. Refused links count as settled:
        they are logged once annotated.
    """
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    first = _look(find_files(folders, exclude))
    sleep(settle_s)
    jobs = find_files(folders, exclude)
    second = _look(jobs)
    settled: list[FileJob] = []
    arriving: list[FileJob] = []
    for job in jobs:
        now = second.get(job.path)
        stable = job.rejection is not None or (now is not None and now[0] > 0 and first.get(job.path) == now)
        (settled if stable else arriving).append(job)
    return settled, arriving
