"""Decode an annotate shard's files in threads, ahead of the detector, in bounded memory.

:func:`read_in_threads` hashes each file, skips the ones already annotated, decodes the rest
into frames (images, sampled video frames) and hands them over through a bounded queue, each
file followed by its end marker (frames sent, or why it was rejected or skipped).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from faces_core.annotate.inputs import (
    SOURCE,
    FileInfo,
    FileJob,
    Frame,
    ReadSettings,
    identify,
    media_rejection,
    read_frames,
)
from faces_core.errors import Rejection
from faces_core.validate import ImageRejected


@dataclass(frozen=True, slots=True)
class _FileEnd:
    """The reader is done with a file: how many frames it sent, or why it failed or was skipped."""

    job: FileJob
    info: FileInfo | None
    frames: int
    rejection: Rejection | None = None
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class _Crash:
    error: BaseException


def _read_file(job: FileJob, done: dict[str, set[str]], settings: ReadSettings, put: Callable[[object], None]) -> None:
    """Hash, skip or decode one file, handing frames and then its end marker to ``put``."""
    identified = identify(job)
    if isinstance(identified, Rejection):
        put(_FileEnd(job, None, 0, identified))
        return
    info = identified
    if info.sha256 in done.get(job.file, ()):
        put(_FileEnd(job, info, 0, skipped=True))
        return
    rejection = media_rejection(info)
    if rejection is not None:
        put(_FileEnd(job, info, 0, rejection))
        return
    frames = 0
    try:
        for frame in read_frames(info, settings):
            put(frame)
            frames += 1
    except ImageRejected as exc:
        put(_FileEnd(job, info, frames, exc.to_rejection(SOURCE, job.file, stage="decode")))
        return
    put(_FileEnd(job, info, frames))


class _Stopped(Exception):
    """The consumer went away; the reader threads stop."""


def read_in_threads(
    jobs: Sequence[FileJob], done: dict[str, set[str]], settings: ReadSettings, threads: int, prefetch: int
) -> Iterator[Frame | _FileEnd]:
    """Frames and end markers of ``jobs``, decoded by ``threads`` threads ahead of the consumer.

    At most ``prefetch`` decoded frames wait in the queue, so a slow detector holds back the
    decoders instead of letting memory grow. Leaving the iteration early stops the threads.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def work(job: FileJob) -> None:
        try:
            _read_file(job, done, settings, put)
        except _Stopped:
            return
        except Exception as exc:  # a bug, not bad data: hand it to the consumer to raise
            try:
                put(_Crash(exc))
            except _Stopped:
                return

    executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="annotate-decode")
    try:
        for job in jobs:
            executor.submit(work, job)
        ended = 0
        while ended < len(jobs):
            item = items.get()
            if isinstance(item, _Crash):
                raise item.error
            if isinstance(item, _FileEnd):
                ended += 1
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
