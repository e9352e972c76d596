"""The content-addressed image store and its crash-safe URL manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
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
"""This machine's name in temp file names (``<host>-<pid>-<uuid>.part``)."""


class ImageStore:
    """Content-addressed image files plus an append-only URL manifest.

    Files live at ``root/<sha[:2]>/<sha><ext>``, so the same bytes at two URLs are stored
    once. ``root/manifest.jsonl`` has one JSON object per stored URL (``url``, ``sha256``,
    ``ext``, ``size``, ``content_type``); each line is flushed and fsynced after the file it
    names, so a kill leaves at worst a torn last line, which reading ignores. Later lines
    win. Safe to share between threads; processes may append to the same store (each line
    is one ``O_APPEND`` write) but only see each other's entries on the next open.

    Args:
        root: Store directory, created if missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST_NAME
        self.partial_dir = self.root / PARTIAL_DIR
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._read_manifest()
        self._repair_torn_tail()
        self._remove_stale_partials()

    def __len__(self) -> int:
        return len(self._entries)

    def path_for(self, sha256: str, ext: str) -> Path:
        """Where the content with this digest lives."""
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def lookup(self, url: str) -> StoredImage | None:
        """The stored image for ``url`` if its file exists and its sha256 still verifies.

        Re-hashes the file, so a truncated or corrupted file reads as missing and is
        downloaded again.
        """
        with self._lock:
            entry = self._entries.get(url)
        if entry is None:
            return None
        path = self.path_for(entry["sha256"], entry["ext"])
        try:
            actual = sha256_file(path)
        except OSError:
            return None
        if actual != entry["sha256"]:
            logger.warning("stored file %s fails its checksum; it will be downloaded again", path)
            return None
        return StoredImage(path, actual, entry["size"], entry["content_type"], from_cache=True)

    def add(
        self,
        url: str,
        chunks: Iterable[bytes],
        max_bytes: int,
        expected_size: int | None = None,
    ) -> StoredImage:
        """Stream bytes into the store and record them under ``url``.

        Writes a temp file in the store (same filesystem), hashing as it goes, then fsyncs
        and atomically renames it into place, then appends the manifest line. A failure at
        any point leaves no partial file behind.

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
        tmp = self.partial_dir / f"{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex}.part"
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
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            fsync_dir(final.parent, best_effort=True)
        finally:
            tmp.unlink(missing_ok=True)
        self._append({"url": url, "sha256": sha, "ext": kind[1], "size": size, "content_type": kind[0]})
        return StoredImage(final, sha, size, kind[0], from_cache=False)

    def _append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        # One O_APPEND write per line keeps lines whole across threads and processes, so the
        # fsync (the slow part) needs no lock.
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._entries[entry["url"]] = entry

    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = {}
        if not self.manifest_path.exists():
            return entries
        skipped = 0
        with open(self.manifest_path, "rb") as f:
            for raw in f:
                entry = _parse_manifest_line(raw)
                if entry is None:
                    skipped += 1
                else:
                    entries[entry["url"]] = entry
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
    if len(entry["sha256"]) != 64 or entry["ext"] not in IMAGE_TYPES.values():
        return None
    return entry


def _write_body(path: Path, chunks: Iterable[bytes], max_bytes: int) -> tuple[str, int, bytes, tuple[str, str] | None]:
    """Write the body to ``path`` and fsync it, hashing it and sniffing its head as it streams.

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
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size, head, kind
