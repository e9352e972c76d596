"""The IMFDB crops: local files hashed (in a process pool when given) and named relative to
the dataset root, never read when they lie or lead outside it or are too large."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from faces_core.errors import Reason, Rejection
from faces_core.files import FileTooLargeError
from faces_core.records import FaceRecord
from faces_core.validate import MAX_CROP_BYTES, sha256_file


def local_files(
    records: Sequence[FaceRecord],
    root: str | os.PathLike[str],
    pool: Executor | None = None,
    max_bytes: int = MAX_CROP_BYTES,
) -> tuple[dict[str, tuple[str, str]], dict[str, str], list[Rejection]]:
    """Hash local images (IMFDB crops) and give each a path relative to ``root`` for Parquet.

    Nothing outside ``root`` is read, whatever the records say (the IMFDB parser already
    refuses such crops; this guards records from anywhere else). The reference is the path
    as the walk named it, relative to ``root``: a symlink inside the root keeps its own name
    rather than its target's, so ``image_ref`` is relative for every face.

    Args:
        records: Faces whose ``image_ref`` names a local file.
        root: The dataset root.
        pool: Checks and hashes the files in these worker processes, in chunks; the
            result is the same as without.
        max_bytes: A larger crop is ``too_large``, never read (``ingest.max_crop_bytes``).

    Returns:
        image_ref -> (path, sha256) for every readable image; image_ref -> path relative to
        ``root``; and one rejection per face whose image lies outside the root
        (``path_outside_root``), resolves outside it through a symlink
        (``symlink_outside_root``) or cannot be read (``unreadable_file``).
    """
    unique = list(dict.fromkeys(r.image_ref for r in records))
    chunks = [unique[i : i + _HASH_CHUNK] for i in range(0, len(unique), _HASH_CHUNK)]
    roots = [os.fspath(root)] * len(chunks)
    caps = [max_bytes] * len(chunks)
    refs: dict[str, str] = {}
    refused: dict[str, tuple[Reason, str]] = {}
    files: dict[str, tuple[str, str]] = {}
    for chunk, outcomes in zip(
        chunks, (pool.map if pool is not None else map)(_check_and_hash, chunks, roots, caps), strict=True
    ):
        for ref, outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, _Refused):
                refused[ref] = (outcome.reason, outcome.message)
            else:
                refs[ref], files[ref] = outcome[0], (ref, outcome[1])
    rejections = [
        Rejection(r.source, r.item, "validate", *refused[r.image_ref]) for r in records if r.image_ref in refused
    ]
    return files, refs, rejections


_HASH_CHUNK = 500
"""Files per job in a pool: big enough that pickling a chunk costs little next to reading
it, small enough that the workers finish together."""


@dataclass(frozen=True, slots=True)
class _Refused:
    reason: Reason
    message: str


def _check_and_hash(
    paths: Sequence[str], root: str, max_bytes: int = MAX_CROP_BYTES
) -> list[tuple[str, str] | _Refused]:
    """For each path: (path relative to ``root``, sha256), or why it is not read.

    The root checks run in the same worker as the hashing, so a pool does both in parallel
    (in the parent they were a tenth of an IMFDB ingest); the outcome is the same anywhere.
    """
    resolver = _RootPaths(root)
    outcomes: list[tuple[str, str] | _Refused] = []
    for ref in paths:
        relative = resolver.relative(ref)
        if relative is None:
            outcomes.append(_Refused(Reason.PATH_OUTSIDE_ROOT, f"{ref} is not under the dataset root {root}; not read"))
            continue
        target = resolver.escapes(ref)
        if target is not None:
            outcomes.append(
                _Refused(Reason.SYMLINK_OUTSIDE_ROOT, f"{relative} links to {target!r} outside the root; not read")
            )
            continue
        try:
            outcomes.append((relative, sha256_file(ref, max_bytes)))
        except FileTooLargeError as exc:
            outcomes.append(_Refused(Reason.TOO_LARGE, f"{relative}: {exc} (ingest.max_crop_bytes); not read"))
        except OSError as exc:
            outcomes.append(_Refused(Reason.UNREADABLE_FILE, f"cannot read {relative}: {exc.strerror or exc}"))
    return outcomes


class _RootPaths:
    """Where paths under one root lead, resolving each folder once (a walk repeats folders).

    ``os.path.realpath`` lstats every component of every path: for 17,000 IMFDB crops that
    was most of the hashing phase. A path whose last component is not a link (nor ``.`` or
    ``..``) resolves to its folder's real path plus its name, so folders are resolved once
    per folder as written (``..`` inside it included, which only ``realpath`` may resolve,
    as a link may precede it) and cached; links are resolved in full. Below-the-root tests
    are string-prefix tests on normalised paths, which is what ``commonpath`` computes.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.abs_root = os.path.abspath(root)
        self.real_root = os.path.realpath(root)
        self._folders: dict[str, str] = {}

    def realpath(self, path: str) -> str:
        """``os.path.realpath(path)``, with the folder's resolution cached."""
        folder, name = os.path.split(path)
        if name in ("", ".", "..") or os.path.islink(path):
            return os.path.realpath(path)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder or os.curdir)
        return os.path.join(real_folder, name)

    def relative(self, ref: str) -> str | None:
        """``ref`` relative to the root with ``/`` separators, or None when it is not below it.

        Paths are compared as written first (so a link keeps its own name), then resolved
        (for a root given through a symlink while the records name the real folder).
        """
        below = _below(os.path.abspath(ref), self.abs_root)
        if below is None:
            below = _below(self.realpath(ref), self.real_root)
        return None if below is None else below.replace(os.sep, "/")

    def escapes(self, ref: str) -> str | None:
        """Where ``ref`` really leads when that is outside the root, else None (as :func:`~faces_core.ingest.sources.imfdb.escapes_root`)."""
        target = self.realpath(ref)
        return None if target == self.real_root or _below(target, self.real_root) is not None else target


def _below(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` when strictly below it (both normalised absolute paths)."""
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path[len(prefix) :] if path.startswith(prefix) and len(path) > len(prefix) else None
