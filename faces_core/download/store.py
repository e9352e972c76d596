"""The content-addressed image store and its crash-safe URL manifest."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from faces_core.download.content import IMAGE_TYPES, SNIFF_BYTES, sniff_or_raise
from faces_core.download.results import DownloadError, StoredImage
from faces_core.errors import Reason
from faces_core.files import fsync_dir
from faces_core.records import url_digest
from faces_core.validate import sha256_file

logger = logging.getLogger(__name__)

MANIFEST_NAME: Final = "manifest.jsonl"
PARTIAL_DIR: Final = ".partial"
STALE_PARTIAL_S: Final = 24 * 3600.0
"""Temp files of another host older than this are leftovers of killed runs, removed on open.

Temp files of this host are named by the writing process's pid and removed on open as soon
as that process is gone, so a re-run after a kill leaves no ``.part`` behind.
"""
_HOST_TAG: Final = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
"""This machine's name in temp file names (``<host>-<pid>-<token><n>.part``)."""
SYNC_EVERY: Final = 256
"""Images stored between two syncs (fsync of their files, their folders and the manifest)."""
SYNC_INTERVAL_S: Final = 1.0
"""Longest time an image waits for its sync while images keep being stored (and, in
:func:`~faces_core.download.pool.download_all`, while they do not)."""
_TEMP_TOKEN: Final = uuid.uuid4().hex[:12]
_temp_numbers = itertools.count()
"""Temp names are this process's token and a counter (``next`` of a count is atomic): unique
without asking the kernel for randomness per file."""


class ImageStore:
    """Content-addressed image files plus an append-only URL manifest.

    Files live at ``root/<sha[:2]>/<sha><ext>``, so the same bytes at two URLs are stored
    once. ``root/manifest.jsonl`` has one JSON object per stored URL (``url``, ``sha256``,
    ``ext``, ``size``, ``content_type``). Later lines win. Safe to share between threads;
    processes may append to the same store (each line is one ``O_APPEND`` write) but only see
    each other's entries on the next open.

    Durability. Each body is written to a temp file and renamed into place, and only then is
    its manifest line written (one ``write``): when :meth:`add` returns, file and line are in
    the kernel, so a killed process (SIGKILL, OOM) loses nothing and the next run fetches
    nothing again; a kill mid-write leaves at worst a torn last line, which reading ignores,
    and a temp file, removed on the next open. Reaching the disk (``fsync``) is what an OS
    crash or power cut needs, and it is done in batches, not per image: every
    :data:`SYNC_EVERY` images or :data:`SYNC_INTERVAL_S` seconds, whichever comes first, the
    batch's files, their folders and then the manifest are fsynced, and :meth:`sync` (called
    by :func:`~faces_core.download.pool.download_all` when it ends, however it ends) syncs
    what is left. A power cut can therefore cost at most the images stored since the last
    completed sync (at most :data:`SYNC_EVERY` of them, or about the last
    :data:`SYNC_INTERVAL_S` seconds' worth, plus those stored while that sync ran): their
    manifest lines may be missing (the URL is downloaded again) or present with a lost or
    torn file, which :meth:`lookup` re-hashes and so downloads again. A file is never
    renamed over an existing one that verifies, so the cut cannot damage an image of an
    earlier, synced batch that the same bytes at another URL point to. Nothing that fails
    its hash is ever served.

    Args:
        root: Store directory, created if missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST_NAME
        self.partial_dir = self.root / PARTIAL_DIR
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._unsynced: list[Path] = []  # files renamed into place since the last sync
        self._unsynced_lines = 0  # manifest lines written since the last sync
        self._unsynced_since = 0.0  # time.monotonic() of the oldest of them
        self._new_folder = False  # a <sha[:2]> folder was made since the last sync: fsync the root too
        self._entries: dict[bytes, _Entry] = self._read_manifest()
        self._repair_torn_tail()
        self._remove_stale_partials()

    def __len__(self) -> int:
        return len(self._entries)

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Sync what is not yet on disk (see :meth:`sync`); the store stays usable."""
        self.sync()

    def sync(self, only_if_due: bool = False) -> None:
        """fsync the files stored since the last sync, their folders, then the manifest.

        Args:
            only_if_due: Sync only when :data:`SYNC_EVERY` images or :data:`SYNC_INTERVAL_S`
                seconds are waiting (a cheap check when they are not).

        Raises:
            OSError: An fsync failed (the disk, not a URL): the batch stays unsynced.
        """
        if only_if_due and not self._due():
            return
        with self._sync_lock:
            with self._lock:
                if not self._unsynced_lines or (only_if_due and not self._due()):
                    return  # another thread synced them meanwhile
                files, self._unsynced = self._unsynced, []
                lines, self._unsynced_lines = self._unsynced_lines, 0
                new_folder, self._new_folder = self._new_folder, False
            try:
                folders = dict.fromkeys(path.parent for path in files)
                if new_folder:
                    folders[self.root] = None
                for path in files:
                    _fsync_path(path)
                for folder in folders:
                    fsync_dir(folder, best_effort=True)  # a lost rename costs a re-download
                _fsync_path(self.manifest_path)
            except BaseException:
                with self._lock:  # still unsynced: the next sync tries them again
                    self._unsynced[:0] = files
                    self._unsynced_lines += lines
                    self._new_folder |= new_folder
                raise

    def _due(self) -> bool:
        lines = self._unsynced_lines  # read without the lock: a stale value only shifts the sync
        return lines >= SYNC_EVERY or (lines > 0 and time.monotonic() - self._unsynced_since >= SYNC_INTERVAL_S)

    def path_for(self, sha256: str, ext: str) -> Path:
        """Where the content with this digest lives."""
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def lookup(self, url: str) -> StoredImage | None:
        """The stored image for ``url`` if its file exists and its sha256 still verifies.

        Re-hashes the file, so a truncated or corrupted file reads as missing and is
        downloaded again.
        """
        with self._lock:
            entry = self._entries.get(url_digest(url))
        if entry is None:
            return None
        digest, ext, size, content_type = entry
        path = self.path_for(digest.hex(), ext)
        try:
            actual = sha256_file(path)
        except OSError:
            return None
        if actual != digest.hex():
            logger.warning("stored file %s fails its checksum; it will be downloaded again", path)
            return None
        return StoredImage(path, actual, size, content_type, from_cache=True)

    def add(
        self,
        url: str,
        chunks: Iterable[bytes],
        max_bytes: int,
        expected_size: int | None = None,
    ) -> StoredImage:
        """Stream bytes into the store and record them under ``url``.

        Writes a temp file in the store (same filesystem), hashing as it goes, then
        atomically renames it into place (unless a file with these bytes is already there),
        then appends the manifest line; a batch sync follows when one is due (see the
        class's Durability). A failure at any point leaves no partial file behind.

        Args:
            url: Key for the manifest.
            chunks: The body; exceptions it raises propagate.
            max_bytes: Abort with ``too_large`` once the body grows past this.
            expected_size: Declared length; a shorter or longer body is a broken transfer.

        Returns:
            The stored image (``from_cache=False``).

        Raises:
            DownloadError: ``too_large``, ``not_an_image`` or ``connection_error`` (truncated).
        """
        tmp = self.partial_dir / f"{_HOST_TAG}-{os.getpid()}-{_TEMP_TOKEN}{next(_temp_numbers)}.part"
        renamed = False
        try:
            sha, size, head, kind = _write_body(tmp, chunks, max_bytes)
            if expected_size is not None and size != expected_size:
                raise DownloadError(
                    Reason.CONNECTION_ERROR,
                    f"truncated transfer: got {size} of {expected_size} bytes",
                    retryable=True,
                )
            if kind is None:
                kind = sniff_or_raise(head)
            final = self.path_for(sha, kind[1])
            # Same bytes stored before (another URL): keep that file when it verifies, so an
            # unsynced rename over it cannot damage an image of an earlier, synced batch.
            if not _verifies(final, sha):
                try:
                    os.replace(tmp, final)
                except FileNotFoundError:  # the first file of this folder
                    final.parent.mkdir(parents=True, exist_ok=True)
                    self._new_folder = True
                    os.replace(tmp, final)
                renamed = True
        finally:
            if not renamed:
                tmp.unlink(missing_ok=True)
        self._append(
            {"url": url, "sha256": sha, "ext": kind[1], "size": size, "content_type": kind[0]},
            final if renamed else None,
        )
        self.sync(only_if_due=True)
        return StoredImage(final, sha, size, kind[0], from_cache=False)

    def _append(self, entry: dict[str, Any], renamed: Path | None) -> None:
        """Write ``entry``'s manifest line and note it (and the file renamed for it) for the next sync."""
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        # One O_APPEND write per line keeps lines whole across threads and processes.
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        with self._lock:
            self._entries[url_digest(entry["url"])] = _packed(entry)
            if not self._unsynced_lines:
                self._unsynced_since = time.monotonic()
            self._unsynced_lines += 1
            if renamed is not None:
                self._unsynced.append(renamed)

    def _read_manifest(self) -> dict[bytes, _Entry]:
        entries: dict[bytes, _Entry] = {}
        if not self.manifest_path.exists():
            return entries
        skipped = 0
        with open(self.manifest_path, "rb") as f:
            for raw in f:
                entry = _parse_manifest_line(raw)
                if entry is None:
                    skipped += 1
                else:
                    entries[url_digest(entry["url"])] = _packed(entry)
        if skipped:
            logger.warning("ignored %d unreadable manifest line(s) in %s", skipped, self.manifest_path)
        return entries

    def _repair_torn_tail(self) -> None:
        """End a torn last line so the next append starts on a line of its own."""
        try:
            with open(self.manifest_path, "rb+") as f:
                if f.seek(0, os.SEEK_END) == 0:
                    return
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
                    f.flush()
                    os.fsync(f.fileno())
        except FileNotFoundError:
            pass

    def _remove_stale_partials(self) -> None:
        """Delete temp files whose writer is dead (same host) or that are a day old (any host)."""
        cutoff = time.time() - STALE_PARTIAL_S
        for part in self.partial_dir.glob("*.part"):
            try:
                if _writer_is_dead(part.name) or part.stat().st_mtime < cutoff:
                    part.unlink()
            except OSError:
                pass


def _writer_is_dead(name: str) -> bool:
    """Whether the temp file ``<host>-<pid>-<uuid>.part`` was written by a process now gone.

    Only decides for this host's files: a pid from another machine (a shared store) says
    nothing here, so those wait for the age cutoff.
    """
    host, _, rest = name.partition("-")
    pid_text, _, _ = rest.partition("-")
    if host != _HOST_TAG or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive but not ours to signal
    return False


_Entry = tuple[bytes, str, int, str]
"""A manifest line as the store keeps it: (SHA-256 digest, extension, size, content type)."""


def _packed(entry: dict[str, Any]) -> _Entry:
    """A manifest line in about 150 bytes instead of a dict of five strings (~1.3 kB): a million
    stored URLs are a run's largest index. Extension and type are shared strings."""
    return (bytes.fromhex(entry["sha256"]), sys.intern(entry["ext"]), entry["size"], sys.intern(entry["content_type"]))


def _parse_manifest_line(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    expected = {"url": str, "sha256": str, "ext": str, "size": int, "content_type": str}
    if not all(isinstance(entry.get(k), t) for k, t in expected.items()):
        return None
    # The ext and digest become a path: accept only what add() writes.
    if not _HEX64.fullmatch(entry["sha256"]) or entry["ext"] not in IMAGE_TYPES.values():
        return None
    return entry


_HEX64: Final = re.compile(r"[0-9a-f]{64}")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verifies(path: Path, sha256: str) -> bool:
    """Whether ``path`` exists and holds the bytes with this digest."""
    try:
        return sha256_file(path) == sha256
    except OSError:
        return False


def _write_body(path: Path, chunks: Iterable[bytes], max_bytes: int) -> tuple[str, int, bytes, tuple[str, str] | None]:
    """Write the body to ``path`` (not fsynced: see :class:`ImageStore`), hashing it and sniffing
    its head as it streams.

    Returns:
        The sha256, the size, the first :data:`SNIFF_BYTES` bytes, and their ``(mime_type,
        extension)`` once that many arrived (None for a shorter body, sniffed by the caller
        after its length check).

    Raises:
        DownloadError: ``too_large`` past ``max_bytes``; ``not_an_image`` as soon as the head
            is not an image (an HTML error page is not downloaded to its end).
    """
    digest = hashlib.sha256()
    head = b""
    size = 0
    kind: tuple[str, str] | None = None
    with open(path, "wb") as out:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise DownloadError(Reason.TOO_LARGE, f"body exceeds {max_bytes} bytes")
            if kind is None and len(head) < SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
                if len(head) >= SNIFF_BYTES:
                    kind = sniff_or_raise(head)  # abort early on an HTML error page
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size, head, kind
