"""Walking the dataset folders: sorted listings, junk files, and nothing outside the root."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from faces_core.errors import Reason, Rejection
from faces_core.ingest.sources.imfdb.rows import IMAGE_SUFFIXES, reject

IMAGES_DIR: Final = "images"
"""The crops' folder inside a movie folder."""
_PATH_SEPARATOR = re.compile(r"[\\/]")
_DRIVE = re.compile(r"[A-Za-z]:")


def relative(path: Path, root: Path) -> str:
    """Path relative to the dataset root with ``/`` separators, for readable error items."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def escapes_root(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str | None:
    """Where ``path`` really leads when that is outside ``root``, else None.

    Both sides are resolved (symlinks followed, also dangling and looping ones, which
    ``realpath`` resolves as far as it can), so a root given through a link still works.

    Args:
        path: A file or folder at or under ``root`` as the walk names it.
        root: The dataset root.

    Returns:
        The resolved target when it is not ``root`` or below it, else None.
    """
    real_root = os.path.realpath(root)
    target = os.path.realpath(path)
    return None if os.path.commonpath([real_root, target]) == real_root else target


def leaves_folder(name: str) -> bool:
    """True when a crop name is a path that can leave its folder: absolute, a drive, or ``..``."""
    return name.startswith(("/", "\\")) or bool(_DRIVE.match(name)) or ".." in _PATH_SEPARATOR.split(name)


def list_dir(
    path: Path, root: Path, sink: list[Rejection], escaped: dict[str, str] | None = None
) -> list[os.DirEntry[str]]:
    """Directory entries sorted by name (deterministic walk), without links leaving the root.

    A folder that cannot be listed yields no entries and an ``unreadable_file`` in
    ``sink``, so its content is reported missing instead of silently skipped. A symlink
    whose target is outside ``root`` is left out and reported as ``symlink_outside_root``
    in ``sink``, or collected as name -> target in ``escaped`` for the caller to report.
    """
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        sink.append(reject(relative(path, root), Reason.UNREADABLE_FILE, f"cannot list folder: {exc}"))
        return []
    kept = []
    for entry in entries:
        if not _utf8(entry.name):
            sink.append(
                reject(
                    relative(Path(entry.path), root),
                    Reason.UNREADABLE_FILE,
                    "name is not valid UTF-8 and cannot be stored; rename it",
                )
            )
            continue
        target = escapes_root(entry.path, root) if entry.is_symlink() else None
        if target is None:
            kept.append(entry)
        elif escaped is not None:
            escaped[entry.name] = target
        else:
            sink.append(symlink_rejection(relative(Path(entry.path), root), target))
    return kept


def _utf8(name: str) -> bool:
    """False for a file name holding bytes that are not UTF-8 (decoded as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def symlink_rejection(item: str, target: str) -> Rejection:
    # The target is named so the user can fix the tree; it is never opened.
    return reject(
        item,
        Reason.SYMLINK_OUTSIDE_ROOT,
        f"symlink to {target!r} outside the dataset root; not followed (copy the file into the root to use it)",
    )


def is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def report_junk(path: Path, root: Path, why: str, sink: list[Rejection]) -> None:
    """One ``junk_file`` per file at or under ``path`` (a stray folder yields its files; an
    empty one, such as a folder named like an annotation ``.txt``, is itself the junk)."""
    if path.is_dir() and not path.is_symlink():
        entries = list_dir(path, root, sink)
        for entry in entries:
            report_junk(Path(entry.path), root, why, sink)
        if not entries:
            sink.append(reject(relative(path, root), Reason.JUNK_FILE, f"{why}: an empty folder {path.name!r}"))
        return
    sink.append(reject(relative(path, root), Reason.JUNK_FILE, f"{why}: {path.name!r}"))


def list_crops(images_dir: Path, root: Path, escaped: dict[str, str]) -> tuple[list[str], list[Rejection]]:
    """Crop file names in ``images/`` and ``junk_file`` rejections for everything else.

    Links leaving the root go to ``escaped`` (name -> target) instead: the rows naming them
    are rejected by the movie parser.
    """
    crops: list[str] = []
    junk: list[Rejection] = []
    for entry in list_dir(images_dir, root, junk, escaped):
        path = Path(entry.path)
        if not entry.name.startswith(".") and not is_dir(entry) and path.suffix.lower() in IMAGE_SUFFIXES:
            crops.append(entry.name)
        else:
            report_junk(path, root, "not a crop image in images/", junk)
    return crops, junk
