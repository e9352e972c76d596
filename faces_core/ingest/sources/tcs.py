"""TCS HumAIn source: DataTurks JSON Lines, one image per line, one record per face box.

Each line reads ``{"content": URL, "annotation": [{"label": [...], "points": [{x, y}, {x, y}],
"imageWidth": W, "imageHeight": H}, ...] | null, ...}`` with the two corners in fractions of
the declared size. The published file has empty annotations, zero-area boxes, ``others``
labels, faces with two ethnicities and ``Not_Face`` boxes that still carry labels: each of
these becomes a :class:`~faces_core.errors.Rejection` (or a kept face plus one), never an
exception. Only an input that cannot be read at all raises :class:`TcsInputError`.

Rules for odd input (see the README): every non-blank line is read on its own and gives
records or rejections; a line longer than ``max_line_bytes`` is ``malformed_line`` without
being parsed (a file is streamed, so it is never held in memory whole); a byte order mark
is dropped at the start of any line (concatenated exports); the two points are corners in
either order; a JSON array file is rejected line by line with a message saying to convert
it to JSON Lines.
"""

from __future__ import annotations

import json
import logging
import math
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

import requests

from faces_core.cancel import raise_if_stopping
from faces_core.errors import Reason, Rejection, redact_userinfo
from faces_core.ingest.sources import MAX_LINE_BYTES, MAX_TCS_BYTES
from faces_core.records import Box, FaceRecord, ParseResult, url_digest
from faces_core.taxonomy import TCS_AMBIGUOUS, empty_labels, map_tcs_label

logger = logging.getLogger(__name__)

SOURCE = "tcs"
STAGE = "parse"
NOT_FACE = ("is_face", "false")
BOM: Final = "\ufeff"
_DRAIN_BYTES: Final = 1024 * 1024


class TcsInputError(OSError):
    """The TCS annotations as a whole cannot be read (missing file, unreachable URL)."""


TCS_DEADLINE_S: Final = 600.0
"""Longest a TCS URL may take to arrive in full: a server dripping bytes is cut there."""


CHUNK_IMAGES: Final = 50_000
"""Default ``ingest.chunk_images``: distinct images per chunk of a streamed TCS file
(:func:`iter_tcs`). A chunk's faces are downloaded, planned and partitioned before the next
chunk is parsed, so a run holds one chunk of records, whatever the file's length."""


def read_tcs(
    path_or_url: str | Path,
    *,
    timeout: float = 30.0,
    session: requests.Session | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_bytes: int = MAX_TCS_BYTES,
    deadline_s: float = TCS_DEADLINE_S,
) -> ParseResult:
    """Read and parse a TCS JSON Lines file from disk or from an http(s) URL.

    Args:
        path_or_url: File path, or an ``http://``/``https://`` URL fetched with requests
            (which honours ``http_proxy``/``https_proxy`` from the environment).
        timeout: Seconds for the HTTP connect and read (ignored for files).
        session: Session to fetch with (for proxies, adapters, auth); a fresh one if None.
        max_line_bytes: Longer lines are ``malformed_line``; a file is read line by line
            with at most this much of a line in memory.
        max_bytes: A larger file, or a URL sending more, is refused whole (TcsInputError).
        deadline_s: A URL must arrive in full within this many seconds.

    Returns:
        Records plus rejections; bad lines are rejections, not exceptions.

    Raises:
        TcsInputError: The file is missing or unreadable, or the URL cannot be fetched.
    """
    return ParseResult.merged(
        iter_tcs(
            path_or_url,
            timeout=timeout,
            session=session,
            max_line_bytes=max_line_bytes,
            max_bytes=max_bytes,
            deadline_s=deadline_s,
            chunk_images=None,
        )
    )


def iter_tcs(
    path_or_url: str | Path,
    *,
    timeout: float = 30.0,
    session: requests.Session | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_bytes: int = MAX_TCS_BYTES,
    deadline_s: float = TCS_DEADLINE_S,
    chunk_images: int | None = CHUNK_IMAGES,
) -> Iterator[ParseResult]:
    """:func:`read_tcs` streamed: one :class:`ParseResult` per ``chunk_images`` distinct images.

    The file is opened (and a URL fetched) at the first ``next()``, where a
    :class:`TcsInputError` is raised. Each chunk holds only its own records and rejections;
    its ``images`` counts the URLs first seen in it, so the chunks' counts add up to the
    file's. What is kept across chunks is the duplicate index (:func:`parse_tcs_chunks`).
    ``chunk_images=None`` yields the whole file as one chunk.
    """
    text = str(path_or_url)
    if isinstance(path_or_url, str) and text.lower().startswith(("http://", "https://")):
        with _fetch(text, timeout, session, max_bytes, deadline_s) as spooled:
            yield from parse_tcs_chunks(_bounded_lines(spooled, max_line_bytes), text, max_line_bytes, chunk_images)
        return
    path = Path(path_or_url)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            # A FIFO would block open() for ever, a device would never end.
            raise TcsInputError(f"TCS annotation file {path} is not a regular file: pass a JSON Lines file")
        if info.st_size > max_bytes:
            raise TcsInputError(
                f"TCS annotation file {path} has {info.st_size} bytes, more than {max_bytes}: split it, or raise "
                "ingest.max_tcs_bytes if it is real"
            )
        f = path.open("rb")
    except FileNotFoundError as exc:
        raise TcsInputError(
            f"TCS annotation file not found: {path}; check the path (ingest.tcs in params.yaml) "
            "or pass the http(s) URL of the DataTurks export"
        ) from exc
    except OSError as exc:
        raise TcsInputError(
            f"cannot read TCS annotation file {path}: {exc}; it must be a readable JSON Lines file"
        ) from exc
    with f:
        try:
            yield from parse_tcs_chunks(_bounded_lines(f, max_line_bytes), text, max_line_bytes, chunk_images)
        except OSError as exc:
            if isinstance(exc, TcsInputError):
                raise
            raise TcsInputError(f"reading TCS annotation file {path} failed: {exc}") from exc


def parse_tcs_lines(lines: Iterable[str], origin: str, max_line_bytes: int = MAX_LINE_BYTES) -> ParseResult:
    """Parse TCS JSON Lines into face records and rejections; never raises on a bad line.

    Args:
        lines: The file's lines (with or without line endings); blank lines are skipped.
        origin: Name of the input (path or URL), used in ``<origin>:<lineno>`` items.
        max_line_bytes: A longer line (UTF-8 bytes) is ``malformed_line`` and not parsed.

    Returns:
        One record per usable face box; ``images`` counts the distinct image URLs. Faces are
        numbered per URL (``<url>#face<k>``, k from 0 in file order), continuing across
        lines that repeat a URL so that items stay unique; a face whose image and box were
        already read is a ``duplicate_row``.
    """
    return ParseResult.merged(parse_tcs_chunks(lines, origin, max_line_bytes, None))


_FACE_NUMBERS: Final = 2**32
"""Face numbers per URL stay below this (a line is at most ``max_line_bytes``): line and
number pack into one int."""


class _FileIndex:
    """What parsing remembers across a whole file, in digests rather than strings.

    Per image URL, the faces numbered so far (:func:`~faces_core.records.url_digest` -> count); per face
    (its :func:`~faces_core.records.face_id`), the line and number it was first read at. That
    is about 200 bytes per face, where the URL, item and line strings it stands for held about
    1 kB: the only per-face memory a streamed parse keeps.
    """

    __slots__ = ("faces_per_url", "first_read")

    def __init__(self) -> None:
        self.faces_per_url: dict[bytes, int] = {}
        self.first_read: dict[int, int] = {}


def parse_tcs_chunks(
    lines: Iterable[str], origin: str, max_line_bytes: int = MAX_LINE_BYTES, chunk_images: int | None = CHUNK_IMAGES
) -> Iterator[ParseResult]:
    """:func:`parse_tcs_lines` in chunks of about ``chunk_images`` distinct images (None: one chunk).

    A chunk ends after the line whose URL makes it ``chunk_images`` new images, so a line is
    never split; a URL repeated on a later line has that line's faces in a later chunk (with
    their face numbers continuing). Duplicate rows are found across the whole file.
    """
    index = _FileIndex()
    result = ParseResult()
    images_before = faces = rejected = 0
    limit = max(1, int(chunk_images)) if chunk_images is not None else None
    for lineno, raw in enumerate(lines, start=1):
        if lineno % 4096 == 0:
            raise_if_stopping("parsing TCS annotations")
        line = raw.removeprefix(BOM)
        if _too_long(line, max_line_bytes):
            _reject(
                result,
                f"{origin}:{lineno}",
                Reason.MALFORMED_LINE,
                f"line is longer than {max_line_bytes} bytes; not parsed (raise ingest.max_line_bytes if it is real)",
            )
        elif line.strip():
            _parse_line(line, origin, lineno, result, index)
        if limit is not None and len(index.faces_per_url) - images_before >= limit:
            result.images = len(index.faces_per_url) - images_before
            images_before = len(index.faces_per_url)
            faces, rejected = faces + len(result.records), rejected + len(result.rejections)
            yield result
            result = ParseResult()
    result.images = len(index.faces_per_url) - images_before
    faces, rejected = faces + len(result.records), rejected + len(result.rejections)
    logger.info("parsed TCS %s: %d images, %d faces, %d rejections", origin, len(index.faces_per_url), faces, rejected)
    if result.images or result.records or result.rejections or not images_before:
        yield result  # the rest, or an empty file's one chunk; not an empty chunk after a full one


def _fetch(url: str, timeout: float, session: requests.Session | None, max_bytes: int, deadline_s: float) -> BinaryIO:
    """The body of ``url`` in a temporary file (memory stays flat however large it is).

    Streamed with a byte cap and a total deadline: an endless body is cut at ``max_bytes``
    and a dripping one at ``deadline_s`` (each read returns what one socket read brings, so
    the clock is looked at between drips).
    """
    started = time.monotonic()
    spooled = tempfile.TemporaryFile()  # noqa: SIM115 - returned open; closed by the caller's with
    own = requests.Session() if session is None else None
    try:
        response = (own or session).get(url, timeout=timeout, stream=True)  # type: ignore[union-attr]
        with response:
            response.raise_for_status()
            total = 0
            while chunk := response.raw.read1(_FETCH_CHUNK, decode_content=True):
                raise_if_stopping(f"fetching TCS annotations from {url}")
                total += len(chunk)
                if total > max_bytes:
                    raise TcsInputError(
                        f"TCS annotations from {url} are larger than {max_bytes} bytes; refused (an endless or "
                        "wrong URL?): download the file and pass its local path"
                    )
                if time.monotonic() - started > deadline_s:
                    raise TcsInputError(
                        f"TCS annotations from {url} did not arrive within {deadline_s:g} s ({total} bytes so far): "
                        "the server is too slow; download the file and pass its local path"
                    )
                spooled.write(chunk)
    except requests.RequestException as exc:
        spooled.close()
        raise TcsInputError(
            f"cannot fetch TCS annotations from {url}: {exc}; check the URL and the network or "
            "http_proxy settings, or download the file and pass its local path"
        ) from exc
    except BaseException:
        spooled.close()
        raise
    finally:
        if own is not None:
            own.close()
    spooled.seek(0)
    return spooled  # type: ignore[return-value]


_FETCH_CHUNK: Final = 1024 * 1024


def _bounded_lines(f: BinaryIO, max_line_bytes: int) -> Iterator[str]:
    """Lines of a binary stream, split on ``\\n`` only, holding at most one bounded line.

    Undecodable bytes are kept as surrogates for the parser to flag. A line longer than
    ``max_line_bytes`` is yielded cut to ``max_line_bytes + 1`` bytes (the parser rejects it
    by its length) and the rest of it is skipped in chunks. ``str.splitlines`` is not used:
    it would also split on U+2028 and friends, which JSON strings may hold.
    """
    while raw := f.readline(max_line_bytes + 1):
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            while (rest := f.readline(_DRAIN_BYTES)) and not rest.endswith(b"\n"):
                pass
        yield raw.removesuffix(b"\n").decode("utf-8", errors="surrogateescape")


def _too_long(line: str, max_line_bytes: int) -> bool:
    # Characters never outnumber UTF-8 bytes, so only long lines pay for the encoding.
    if len(line.rstrip("\r\n")) <= max_line_bytes // 4:
        return False
    return len(line.rstrip("\r\n").encode("utf-8", errors="surrogatepass")) > max_line_bytes


def _reject(result: ParseResult, item: str, reason: Reason, message: str) -> None:
    result.rejections.append(Rejection(SOURCE, item, STAGE, reason, message))


def _parse_line(line: str, origin: str, lineno: int, result: ParseResult, index: _FileIndex) -> None:
    where = f"{origin}:{lineno}"
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        _reject(result, where, Reason.MALFORMED_LINE, "line is not valid UTF-8")
        return
    try:
        obj = json.loads(line)
        # A "\\ud800" escape decodes to a lone surrogate, which no UTF-8 output can hold.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        _reject(result, where, Reason.MALFORMED_LINE, "a \\u escape encodes no character (lone surrogate)")
        return
    except (ValueError, RecursionError) as exc:
        _reject(result, where, Reason.MALFORMED_LINE, f"invalid JSON: {exc}")
        return
    if isinstance(obj, list):
        _reject(
            result,
            where,
            Reason.MALFORMED_LINE,
            "expected one JSON object per line, got an array: convert a JSON array file to JSON Lines "
            "(one object per line, e.g. jq -c '.[]')",
        )
        return
    if not isinstance(obj, dict):
        _reject(result, where, Reason.MALFORMED_LINE, f"expected a JSON object, got {type(obj).__name__}")
        return
    url = obj.get("content")
    if not isinstance(url, str) or not url.strip():
        _reject(result, where, Reason.MISSING_FIELD, f"'content' (image URL) is missing or not a string: {url!r}")
        return
    url = url.strip()
    url_key = url_digest(url)
    first_face = index.faces_per_url.setdefault(url_key, 0)
    if "annotation" not in obj:
        _reject(result, where, Reason.MISSING_FIELD, f"'annotation' is missing for {url}")
        return
    faces = obj["annotation"]
    if faces is None or faces == []:
        _reject(result, url, Reason.NO_FACES, f"annotation is {faces!r}: no face annotated ({where})")
        return
    if not isinstance(faces, list):
        _reject(result, where, Reason.MALFORMED_LINE, f"'annotation' is a {type(faces).__name__}, expected a list")
        return
    index.faces_per_url[url_key] = first_face + len(faces)
    for k, face in enumerate(faces, start=first_face):
        record = _parse_face(face, url, k, result)
        if record is None:
            continue
        face_key = int(record.face_id, 16)
        first = index.first_read.get(face_key)
        if first is not None:
            first_line, first_k = divmod(first, _FACE_NUMBERS)
            _reject(
                result,
                record.item,
                Reason.DUPLICATE_ROW,
                f"same image and box as {redact_userinfo(url)}#face{first_k} ({origin}:{first_line})",
            )
            continue
        index.first_read[face_key] = lineno * _FACE_NUMBERS + k
        result.records.append(record)


def _parse_face(face: object, url: str, k: int, result: ParseResult) -> FaceRecord | None:
    item = f"{redact_userinfo(url)}#face{k}"  # the item is stored (Parquet, error log): no password
    if not isinstance(face, dict):
        _reject(result, item, Reason.BAD_GEOMETRY, f"face entry is {type(face).__name__}, expected an object")
        return None
    geometry = _geometry(face)
    if isinstance(geometry, str):
        _reject(result, item, Reason.BAD_GEOMETRY, geometry)
        return None
    box, width, height = geometry
    if box.width <= 0 or box.height <= 0:
        _reject(
            result,
            item,
            Reason.DEGENERATE_BOX,
            f"box {box.width:g}x{box.height:g} px has zero area (points {face['points']})",
        )
        return None
    return FaceRecord(
        source=SOURCE,
        item=item,
        image_ref=url,
        subject=None,
        movie=None,
        box=box,
        labels=_labels(face.get("label"), item, result),
        image_width=width,
        image_height=height,
        split_key=url,
    )


def _number(value: object) -> float | None:
    """A finite int/float (JSON allows NaN and Infinity literals, and ints past float range;
    bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _size(value: object) -> int | None:
    number = _number(value)
    if number is None or number <= 0 or not number.is_integer():
        return None
    return int(number)


def _geometry(face: dict[str, object]) -> tuple[Box, int, int] | str:
    """Pixel box and declared image size, or a message saying why the geometry is unusable."""
    points = face.get("points")
    if not isinstance(points, list) or len(points) != 2 or not all(isinstance(p, dict) for p in points):
        return f"points must be a list of two {{x, y}} objects, got {points!r}"
    xs = [_number(p.get("x")) for p in points]
    ys = [_number(p.get("y")) for p in points]
    if None in xs or None in ys:
        return f"point coordinates must be finite numbers, got {points!r}"
    width, height = _size(face.get("imageWidth")), _size(face.get("imageHeight"))
    if width is None or height is None:
        return (
            "imageWidth/imageHeight must be positive integers, got "
            f"{face.get('imageWidth')!r}x{face.get('imageHeight')!r}"
        )
    fx0, fx1 = sorted(x for x in xs if x is not None)
    fy0, fy1 = sorted(y for y in ys if y is not None)
    return Box(fx0 * width, fy0 * height, fx1 * width, fy1 * height), width, height


def _labels(raw: object, item: str, result: ParseResult) -> dict[str, str | None]:
    """Map raw labels to the taxonomy; unknown, ambiguous and conflicting ones are reported."""
    labels = empty_labels()
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        _reject(result, item, Reason.UNKNOWN_LABEL, f"'label' is {raw!r}, expected a list of strings")
        raw = []
    not_face = any(isinstance(s, str) and map_tcs_label(s) == NOT_FACE for s in raw)
    found: dict[str, list[tuple[str, str]]] = {}
    for s in raw:
        if not isinstance(s, str):
            _reject(result, item, Reason.UNKNOWN_LABEL, f"label {s!r} is not a string")
            continue
        if s.strip() in TCS_AMBIGUOUS:
            _reject(result, item, Reason.AMBIGUOUS_LABEL, f"label {s!r} names no attribute; ignored")
            continue
        mapped = map_tcs_label(s)
        if mapped is None:
            _reject(result, item, Reason.UNKNOWN_LABEL, f"label {s!r} is not in taxonomy.TCS_LABELS; ignored")
        elif mapped[0] == "is_face":
            continue
        elif not_face:
            _reject(result, item, Reason.CONFLICTING_LABELS, f"label {s!r} dropped: the box is marked Not_Face")
        else:
            found.setdefault(mapped[0], []).append((s, mapped[1]))
    for attribute, pairs in found.items():
        values = {value for _, value in pairs}
        if len(values) == 1:
            labels[attribute] = values.pop()
        else:
            raws = [s for s, _ in pairs]
            _reject(result, item, Reason.CONFLICTING_LABELS, f"{attribute} labels {raws} disagree; left unset")
    labels["is_face"] = "false" if not_face else "true"
    return _shared(labels)


_SHARED_LABELS: dict[tuple[tuple[str, str | None], ...], dict[str, str | None]] = {}


def _shared(labels: dict[str, str | None]) -> dict[str, str | None]:
    """One dict object per distinct set of labels (there are few), not one per face.

    A million faces held a million equal 8-entry dicts (about 400 MB). Records never change
    their labels after parsing, so equal ones may be the same object.
    """
    key = tuple(labels.items())
    shared = _SHARED_LABELS.get(key)
    if shared is None:
        if len(_SHARED_LABELS) >= 100_000:  # a pathological input: stop sharing rather than grow
            return labels
        shared = _SHARED_LABELS.setdefault(key, labels)
    return shared
