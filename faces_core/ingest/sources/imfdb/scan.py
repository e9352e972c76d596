"""The whole ``IMFDB_final`` tree: actors and movies walked in sorted order, movie folders parsed
in this process or a pool of worker processes."""

from __future__ import annotations

import logging
import os
from concurrent.futures import Executor
from pathlib import Path

from faces_core.errors import Reason, Rejection, count_by_reason
from faces_core.ingest.sources import MAX_LINE_BYTES, MAX_TXT_BYTES
from faces_core.ingest.sources.imfdb.movie import MovieParser
from faces_core.ingest.sources.imfdb.rows import reject
from faces_core.ingest.sources.imfdb.tree import (
    IMAGES_DIR,
    is_dir,
    list_crops,
    list_dir,
    relative,
    report_junk,
    symlink_rejection,
)
from faces_core.records import ParseResult

logger = logging.getLogger(__name__)


def _scan_movie(
    movie_dir: Path, root: Path, subject: str, max_line_bytes: int, max_file_bytes: int = MAX_TXT_BYTES
) -> ParseResult:
    """All txt files of one movie folder, then its orphan crops and junk files."""
    unlisted: list[Rejection] = []
    entries = list_dir(movie_dir, root, unlisted)
    images = next((e for e in entries if e.name == IMAGES_DIR and is_dir(e)), None)
    escaped: dict[str, str] = {}
    crops, junk = list_crops(Path(images.path), root, escaped) if images is not None else ([], [])
    junk[:0] = unlisted
    parser = MovieParser(movie_dir, root, crops, escaped, max_line_bytes, max_file_bytes)
    for entry in entries:
        path = Path(entry.path)
        if entry is images:
            continue
        if path.suffix.lower() == ".txt" and not entry.name.startswith(".") and not is_dir(entry):
            parser.feed_file(path)
        else:
            report_junk(path, root, "not an annotation txt or images/ folder", junk)
    result = parser.finish(subject=subject, movie=movie_dir.name)
    named = parser.named()
    images_dir = movie_dir / IMAGES_DIR
    for name in crops:
        if name not in named:
            result.rejections.append(
                reject(relative(images_dir / name, root), Reason.ORPHAN_CROP, f"no row names crop {name!r}; no labels")
            )
    for name, target in sorted(escaped.items()):
        if name not in parser.named_links:
            result.rejections.append(symlink_rejection(relative(images_dir / name, root), target))
    result.rejections.extend(junk)
    result.images = len(crops)
    return result


def scan_imfdb(
    root: str | os.PathLike[str],
    max_line_bytes: int = MAX_LINE_BYTES,
    pool: Executor | None = None,
    max_file_bytes: int = MAX_TXT_BYTES,
) -> ParseResult:
    """Parse a whole ``IMFDB_final`` tree without opening any image.

    Folders are walked in sorted order so records and rejections come out in the same
    order on every machine. Files outside ``<Actor>/<Movie>/*.txt`` and
    ``<Actor>/<Movie>/images/<crop>`` are reported as ``junk_file``.

    Args:
        root: The ``IMFDB_final`` folder (one sub-folder per actor).
        max_line_bytes: A longer txt line is ``malformed_line`` and not parsed.
        pool: Parses movie folders in these worker processes (each movie is independent;
            results keep the walk's order, so the output is the same as without a pool).
        max_file_bytes: A larger annotation txt is ``too_large``, never read
            (``ingest.max_annotation_bytes``).

    Returns:
        Records and rejections (source ``imfdb``, stage ``parse``); ``images`` counts the
        crop files found on disk.

    Raises:
        NotADirectoryError: When ``root`` is not a folder (a bad input, not a bad row).
    """
    root_path = Path(root).absolute()
    if not root_path.is_dir():
        raise NotADirectoryError(f"IMFDB root {str(root_path)!r} is not a directory; point it at IMFDB_final/")
    steps: list[Rejection | tuple[Path, str]] = []  # in walk order: junk found, or a movie to parse
    found: list[Rejection] = []
    for actor in list_dir(root_path, root_path, found):
        if not is_dir(actor) or actor.name.startswith("."):
            report_junk(Path(actor.path), root_path, "not an actor folder", found)
            continue
        movies = list_dir(Path(actor.path), root_path, found)
        steps += found
        found = []
        for movie in movies:
            if not is_dir(movie) or movie.name.startswith("."):
                report_junk(Path(movie.path), root_path, "not a movie folder", found)
                steps += found
                found = []
            else:
                steps.append((Path(movie.path), actor.name))
    steps += found
    movie_steps = [step for step in steps if isinstance(step, tuple)]
    args = (
        [movie for movie, _ in movie_steps],
        [root_path] * len(movie_steps),
        [actor for _, actor in movie_steps],
        [max_line_bytes] * len(movie_steps),
        [max_file_bytes] * len(movie_steps),
    )
    parsed = iter(pool.map(_scan_movie, *args, chunksize=4) if pool is not None else map(_scan_movie, *args))
    result = ParseResult()
    for step in steps:
        if isinstance(step, tuple):
            result.extend(next(parsed))
        else:
            result.rejections.append(step)
    logger.info(
        "IMFDB %s: %d records from %d crops, rejections %s",
        root_path,
        len(result.records),
        result.images,
        count_by_reason(result.rejections),
    )
    return result
