"""Find the files to annotate and decode them into frames for the detector.

Folders are walked recursively in sorted order. A file is an image when Pillow recognises
its content (whatever its name), a video when its first bytes are a known container
signature (MP4/MOV, AVI, Matroska/WebM, ...) or its extension says so; anything else is
``junk_file``. Decoding reuses ingest's :func:`~faces_core.validate.decode_image` (EXIF
orientation, transparency, CMYK, 16-bit, pixel-count guard); videos are sampled every
``video_every_s`` seconds with OpenCV. Every frame is shrunk to the detector's long-side cap
as soon as it is decoded, so memory does not grow with the size of the photos.

Symlinks follow ingest's rule: a link whose target leaves its input folder is not followed
(``symlink_outside_root``); links inside it are, and the file keeps the link's path.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from faces_core.annotate.settings import ReadSettings
from faces_core.errors import Reason, Rejection, utf8_text
from faces_core.files import kind_of, open_regular
from faces_core.inference.detect import Prepared, prepare
from faces_core.validate import ImageRejected, ValidateSettings, decode_image

log = logging.getLogger(__name__)

SOURCE: Final = "annotate"
IMAGE_EXTENSIONS: Final = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".heic"}
)
VIDEO_EXTENSIONS: Final = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts"}
)
_VIDEO_MAGIC: Final = (
    (4, b"ftyp"),  # MP4, MOV, 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska, WebM
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),  # ASF / WMV
)

Kind = Literal["image", "video", "other"]


@dataclass(frozen=True, slots=True)
class FileJob:
    """A file found under an input folder.

    Attributes:
        path: Absolute path (symlinks not resolved): where it is read.
        root: The input folder it was found in (absolute).
        rejection: Set when the walk already refused it (a link leaving the folder).
        name: What the outputs call it (the ``file`` column, error log items, what a re-run
            skips by) when that is not ``path``: the URL of an object whose local copy is
            ``path``.
    """

    path: str
    root: str
    rejection: Rejection | None = None
    name: str | None = None

    @property
    def file(self) -> str:
        """The file's identity in the outputs: ``name``, else ``path``."""
        return self.name or self.path

    @property
    def relative(self) -> str:
        """The path relative to its input folder."""
        return os.path.relpath(self.path, self.root)


def find_files(
    inputs: Sequence[str | os.PathLike[str]], exclude: Sequence[str | os.PathLike[str]] = ()
) -> list[FileJob]:
    """Every file under the input folders (or the inputs themselves when they are files).

    Args:
        inputs: Folders (walked recursively) or single files.
        exclude: Folders never entered (the output folder when it lies inside an input).

    Returns:
        Files in a stable order (input order, then sorted paths), each once.

    Raises:
        FileNotFoundError: An input does not exist (a typo must not look like an empty folder).
    """
    skip = {Path(p).absolute() for p in exclude}
    jobs: dict[str, FileJob] = {}
    for given in inputs:
        root = Path(given).absolute()
        if not root.exists():
            raise FileNotFoundError(f"input {given} does not exist: give existing folders or files to annotate")
        if root.is_file():
            jobs.setdefault(str(root), FileJob(str(root), str(root.parent)))
            continue
        real_root = root.resolve()
        for job in _walk(root, real_root, skip):
            jobs.setdefault(job.path, job)
    return list(jobs.values())


def _walk(root: Path, real_root: Path, skip: set[Path], seen: set[tuple[int, int]] | None = None) -> Iterator[FileJob]:
    """Files under ``root`` as ingest's path rules allow: every folder once, nothing outside.

    Each folder is entered once, by device and inode, so a link to an ancestor (``sub/up ->
    ..``) or a second link to the same folder adds nothing; links leaving the input folder
    are refused (``symlink_outside_root``); link loops, dangling links, names that are not
    UTF-8 and anything that is no regular file (FIFO, socket, device) are ``unreadable_file``,
    never opened.
    """
    seen = set() if seen is None else seen
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(directory)
        try:
            info = os.stat(here)
        except OSError:
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        kept = []
        for name in sorted(dirnames):
            sub = here / name
            if sub in skip or name.startswith("."):
                continue
            if not _utf8(name):
                yield _unreadable(sub, root, "its name is not valid UTF-8")
                continue
            if sub.is_symlink():
                try:
                    target = sub.resolve(strict=True)
                except (OSError, RuntimeError) as exc:  # a loop, or a dangling link
                    yield _unreadable(sub, root, f"folder link that cannot be followed ({_why(exc)})")
                    continue
                if not target.is_relative_to(real_root):
                    yield _refused(sub, root, f"folder link {sub} points outside {root} to {target}: not followed")
                    continue
                yield from _walk(sub, real_root, skip, seen)  # os.walk does not enter links: walk it here
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # hidden files: partial downloads (.part), .DS_Store, our temp files
            path = here / name
            if not _utf8(name):
                yield _unreadable(path, root, "its name is not valid UTF-8")
                continue
            try:
                if path.is_symlink():
                    target = path.resolve(strict=True)
                    if not target.is_relative_to(real_root):
                        yield _refused(path, root, f"link {path} points outside {root} to {target}: not followed")
                        continue
                mode = os.stat(path).st_mode
            except (OSError, RuntimeError) as exc:
                yield _unreadable(path, root, f"cannot be followed or read ({_why(exc)})")
                continue
            if stat.S_ISDIR(mode):
                continue  # a link to a folder inside the root: os.walk lists it as a file; walked as a folder
            if not stat.S_ISREG(mode):
                yield _unreadable(path, root, f"{kind_of(mode)}, not a regular file: never opened")
                continue
            yield FileJob(str(path), str(root))


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back from os.walk as lone surrogates
        return False
    return True


def _why(exc: BaseException) -> str:
    return (
        "symlink loop"
        if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
        else str(getattr(exc, "strerror", None) or exc)
    )


def _unreadable(path: Path, root: Path, message: str) -> FileJob:
    """A file the walk refuses as ``unreadable_file``; its path is made storable as UTF-8."""
    shown = utf8_text(str(path))
    return FileJob(shown, str(root), Rejection(SOURCE, shown, "scan", Reason.UNREADABLE_FILE, f"{shown}: {message}"))


def relative_jobs(jobs: Sequence[FileJob], start: str | os.PathLike[str] = ".") -> list[FileJob]:
    """``jobs`` with paths relative to ``start`` (the working directory) where they lie below it.

    The DVC ``annotate`` stage runs in the repository: its rows then name ``data/sample/...``
    rather than this clone's absolute path, so another clone gives the same bytes.
    """
    base = os.path.abspath(start)

    def rel(path: str) -> str:
        return os.path.relpath(path, base) if os.path.abspath(path).startswith(base + os.sep) else path

    out = []
    for job in jobs:
        rejection = job.rejection
        if rejection is not None:
            rejection = Rejection(
                rejection.source,
                rejection.item.replace(job.path, rel(job.path)),
                rejection.stage,
                rejection.reason,
                rejection.message.replace(job.path, rel(job.path)),
            )
        out.append(FileJob(rel(job.path), rel(job.root), rejection))
    return out


def _refused(path: Path, root: Path, message: str) -> FileJob:
    return FileJob(str(path), str(root), Rejection(SOURCE, str(path), "scan", Reason.SYMLINK_OUTSIDE_ROOT, message))


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What is known about a file once read: identity, kind and size.

    Attributes:
        job: The file.
        sha256: Hex digest of its bytes (None when it could not be read).
        size_bytes: Its size.
        kind: ``image``, ``video`` or ``other``.
    """

    job: FileJob
    sha256: str | None
    size_bytes: int
    kind: Kind


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded picture of a file: the image itself, or a sampled video frame.

    Attributes:
        info: The file it comes from.
        prepared: Pixels shrunk to the detector's cap, with the scale back to the original.
        frame_index: Video frame number (None for an image).
        timestamp_s: Video time in seconds (None for an image).
    """

    info: FileInfo
    prepared: Prepared
    frame_index: int | None = None
    timestamp_s: float | None = None


def sha256_and_size(path: str) -> tuple[str, int]:
    """Hex sha256 and byte count of a file (read in chunks).

    Raises:
        OSError: The file cannot be read.
    """
    with open_regular(path) as fh:  # a FIFO swapped in after the walk is refused, never waited on
        digest = hashlib.file_digest(fh, "sha256")
        return digest.hexdigest(), fh.tell()


def sniff(path: str) -> Kind:
    """Whether a file is an image, a video or neither, from its content first, then its name."""
    try:
        with Image.open(path) as probe:
            probe.format  # noqa: B018 - opening parsed the header: it is an image
            return "image"
    except (UnidentifiedImageError, Image.DecompressionBombError):
        pass
    except (OSError, SyntaxError, ValueError, EOFError):
        return "image" if Path(path).suffix.lower() in IMAGE_EXTENSIONS else "other"
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        head = b""
    if any(head[offset : offset + len(magic)] == magic for offset, magic in _VIDEO_MAGIC):
        return "video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return "image" if suffix in IMAGE_EXTENSIONS else "other"


def identify(job: FileJob) -> FileInfo | Rejection:
    """Hash and classify one file; a file that cannot be read (or was refused) is a rejection."""
    if job.rejection is not None:
        return job.rejection
    try:
        sha, size = sha256_and_size(job.path)
    except OSError as exc:
        return Rejection(SOURCE, job.file, "read", Reason.UNREADABLE_FILE, f"{job.file}: {exc.strerror or exc}")
    return FileInfo(job, sha, size, sniff(job.path) if size else "other")


def media_rejection(info: FileInfo) -> Rejection | None:
    """Why a file cannot be annotated before decoding: empty, or neither image nor video.

    A file named like an image whose content no decoder reads counts as an image here, so
    decoding rejects it as ``not_an_image``.
    """
    path = info.job.file
    if info.size_bytes == 0:
        return Rejection(
            SOURCE, path, "read", Reason.EMPTY_FILE, f"{path} has 0 bytes: it is annotated once it has content"
        )
    if info.kind != "other":
        return None
    return Rejection(SOURCE, path, "read", Reason.JUNK_FILE, f"{path} is neither an image nor a video")


def read_frames(info: FileInfo, settings: ReadSettings) -> Iterator[Frame]:
    """Decode a file into frames shrunk to ``settings.max_side``, one at a time.

    Raises:
        ImageRejected: The image cannot be decoded (reason from ingest's validator), or
            the video cannot be opened or yields no frame (``unreadable_video``).
    """
    if info.kind == "image":
        if info.size_bytes > settings.max_image_bytes:
            raise ImageRejected(
                Reason.TOO_LARGE,
                f"{info.job.path} has {info.size_bytes} bytes, more than annotate.max_image_bytes "
                f"({settings.max_image_bytes}); not decoded",
            )
        decoded = decode_image(
            info.job.path, ValidateSettings(max_image_pixels=settings.max_image_pixels), max_side=settings.max_side
        )
        yield Frame(info, prepare(decoded.image, settings.max_side, decoded.full_size))
        return
    yield from _video_frames(info, settings)


def _video_frames(info: FileInfo, settings: ReadSettings) -> Iterator[Frame]:
    """Frames every ``video_every_s`` seconds, read in order (seeking is unreliable across codecs)."""
    # OpenCV and FFmpeg print their own complaints about broken files to stderr; ours go to
    # the error log with a reason, so theirs are silenced.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # cv2 may already be loaded (facenet)

    capture = cv2.VideoCapture(info.job.path)
    try:
        if not capture.isOpened():
            raise ImageRejected(Reason.UNREADABLE_VIDEO, f"{info.job.path}: OpenCV cannot open this video")
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not fps or not np.isfinite(fps) or fps <= 0:
            log.warning("%s: no frame rate in the file, assuming 25 fps", info.job.path)
            fps = 25.0
        index, sampled, next_time = 0, 0, 0.0
        while sampled < settings.video_max_frames:
            if not capture.grab():
                break
            timestamp = index / fps
            if timestamp + 1e-9 >= next_time:
                ok, bgr = capture.retrieve()
                if ok and bgr is not None and bgr.ndim == 3:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    yield Frame(info, prepare(rgb, settings.max_side), index, round(timestamp, 6))
                    sampled += 1
                next_time += settings.video_every_s
            index += 1
        if sampled == 0:
            raise ImageRejected(Reason.UNREADABLE_VIDEO, f"{info.job.path}: no frame could be decoded")
    finally:
        capture.release()
