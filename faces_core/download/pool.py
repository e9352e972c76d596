"""The driver: every URL of a run through a window of worker threads, into a report."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from faces_core.download.fetch import _Fetcher
from faces_core.download.results import DownloadError, DownloadReport, StoredImage
from faces_core.download.settings import DownloadSettings
from faces_core.download.store import SYNC_INTERVAL_S, ImageStore
from faces_core.download.watchdog import _Watchdog, make_session
from faces_core.errors import Rejection, count_by_reason

logger = logging.getLogger(__name__)

SUBMIT_WINDOW: Final = 4
"""URLs submitted to the download threads at a time, per thread: memory stays bounded by the
concurrency, not by the number of URLs, and no thread waits for work."""


def download_all(
    urls: Iterable[str],
    store: ImageStore,
    settings: DownloadSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    source: str = "tcs",
    stop: threading.Event | None = None,
) -> DownloadReport:
    """Download every unique URL into ``store``, concurrently, resuming what is stored.

    Only ``http``/``https`` URLs are fetched, with retries (exponential backoff with full
    jitter, honouring ``Retry-After``) inside a total deadline per attempt and per URL. A URL
    already in the store whose file verifies is not fetched again (``from_cache=True``).

    Stopping is prompt: when ``stop`` is set, or when the calling thread is interrupted
    (SIGTERM turned into an exception, Ctrl-C), URLs not started are cancelled and in-flight
    requests are cut; images stored so far stay stored (file and manifest line).

    The store is synced to disk in batches while the URLs are fetched (at least every
    :data:`~faces_core.download.store.SYNC_INTERVAL_S` seconds) and once more when this call
    ends, however it ends: see :class:`ImageStore` for what a power cut can cost meanwhile.

    Args:
        urls: Image URLs; duplicates are fetched once.
        store: Where images and the manifest go.
        settings: Network settings (defaults when None).
        progress: Called as ``progress(done, total)`` in the calling thread each time a URL
            finishes; keep it cheap.
        source: Dataset name for the rejections.
        stop: Set it (from any thread) to stop the downloads; it is also set when this call
            ends by an exception, so other users of the event see the stop.

    Returns:
        A result or a rejection (stage ``download``, item = URL) for every unique URL, both in
        input order.

    Raises:
        DownloadCancelled: ``stop`` was set before every URL finished.
        OSError: Only for failures of the store itself (disk full), never for a bad URL.
    """
    settings = settings or DownloadSettings()
    stop = stop if stop is not None else threading.Event()
    unique = list(dict.fromkeys(urls))
    logger.info("downloading %d unique URLs with %d workers into %s", len(unique), settings.concurrency, store.root)
    watchdog = _Watchdog(stop)
    try:
        with make_session(settings) as session:
            outcomes = _fetch_all(_Fetcher(store, settings, session, stop, watchdog), unique, progress)
    except BaseException:
        watchdog.close()
        try:
            store.sync()  # what was stored before the stop reaches the disk too
        except OSError as exc:  # the first error is the one to raise
            logger.warning("could not sync the image store %s: %s", store.root, exc)
        raise
    watchdog.close()
    store.sync()
    return _report(unique, outcomes, source)


def _fetch_all(
    fetcher: _Fetcher, unique: list[str], progress: Callable[[int, int], None] | None
) -> dict[str, StoredImage | DownloadError]:
    """Each URL's image or failure: the store is asked in this thread, the rest is fetched by a
    pool of threads a window of URLs at a time.

    A URL already stored is verified here (a re-hash, no network), not in the pool: 64 threads
    contending for the interpreter to re-hash small files took three times the CPU of one.

    On any exception (signal, Ctrl-C, stop, store failure) the fetcher's stop is set, in-flight
    attempts are cut and URLs not started are cancelled before it propagates.
    """
    settings = fetcher.settings
    total = len(unique)
    outcomes: dict[str, StoredImage | DownloadError] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(settings.concurrency, total)), thread_name_prefix="download")
    # A window of URLs in flight, not a future per URL: a million-URL run held a
    # Future (with its lock and condition) for every URL at once, about 3 KB each.
    pending: dict[Future[StoredImage], str] = {}
    # Each future puts itself here when it finishes: waiting with concurrent.futures.wait
    # installed and removed a waiter on every pending future (the whole window) each time.
    finished: queue.SimpleQueue[Future[StoredImage]] = queue.SimpleQueue()
    todo = iter(unique)
    window = SUBMIT_WINDOW * settings.concurrency
    done = 0

    def record(url: str, outcome: StoredImage | DownloadError) -> None:
        nonlocal done
        if isinstance(outcome, DownloadError):
            logger.debug("rejected %s: %s", url, outcome)
        outcomes[url] = outcome
        done += 1
        if progress is not None:
            progress(done, total)

    try:
        while True:
            while len(pending) < window and (url := next(todo, None)) is not None:
                try:
                    cached = fetcher.from_cache(url)
                except DownloadError as exc:
                    record(url, exc)
                    continue
                if cached is not None:
                    record(url, cached)
                    continue
                future = pool.submit(fetcher.download, url)
                pending[future] = url
                future.add_done_callback(finished.put)
            if not pending:
                break
            try:
                next_done = finished.get(timeout=SYNC_INTERVAL_S)  # a signal interrupts it (SIGTERM, Ctrl-C)
            except queue.Empty:
                next_done = None
            fetcher.store.sync(only_if_due=True)  # also while no image is being stored
            if next_done is None:
                continue
            outcome: StoredImage | DownloadError
            try:
                outcome = next_done.result()
            except DownloadError as exc:
                outcome = exc
            record(pending.pop(next_done), outcome)
    except BaseException:
        # Interrupted (signal, Ctrl-C, stop, store failure): cancel what has not started
        # and cut what is in flight, so the workers end in moments, not minutes.
        fetcher.stop.set()
        fetcher.watchdog.abort_all()
        pool.shutdown(wait=True, cancel_futures=True)
        logger.warning(
            "download stopped: %d of %d URLs finished; stored images are kept for the next run",
            len(outcomes),
            total,
        )
        raise
    pool.shutdown(wait=True)
    return outcomes


def _report(unique: list[str], outcomes: dict[str, StoredImage | DownloadError], source: str) -> DownloadReport:
    """The outcomes in input order: results, and rejections (stage ``download``, item = URL)."""
    report = DownloadReport()
    for url in unique:
        outcome = outcomes[url]
        if isinstance(outcome, StoredImage):
            report.results[url] = outcome
        else:
            report.rejections.append(Rejection(source, url, "download", outcome.reason, outcome.message))
    logger.info(
        "download finished: %d downloaded, %d from cache, %d rejected %s",
        report.downloaded,
        report.cached,
        len(report.rejections),
        count_by_reason(report.rejections),
    )
    return report
