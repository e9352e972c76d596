"""Synthetic TCS export and loopback routes that stand in for the gone TCS image hosts.

:func:`write_tcs_sample` draws a small TCS export holding every quirk the parser must survive
plus a plan of injected HTTP failures; :func:`load_routes` turns that plan back into server
routes in another process (the demo serves what an earlier step wrote);
:func:`routes_for_jsonl` draws stand-in images for an existing export, such as the real one,
at the sizes it declares, so the whole pipeline runs against
:class:`~faces_core.testing.LoopbackServer` in proxy mode.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from PIL import Image

from faces_core.errors import Reason
from faces_core.ingest.sources.tcs import parse_tcs_lines
from faces_core.sample import draw_face, encode, face_image
from faces_core.testing import Route

logger = logging.getLogger(__name__)

JSONL_NAME = "faces.jsonl"
PLAN_NAME = "routes.json"
IMAGES_DIR = "images"
DEFAULT_HOST = "http://tcs-sample.invalid"
DEFAULT_SIZE = (640, 480)
"""Size drawn for a URL whose line declares no usable face (the size is unknown)."""

CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}
EXIF_ORIENTATION = 0x0112

_LABEL_SETS = (
    ["Emotion_Happy", "Age_20_30", "E_White", "G_Male"],
    ["Emotion_Neutral", "Age_30_40", "E_Indian", "G_ Female"],
    ["Emotion_Sad", "Age_40_50", "E_Black", "G_Male"],
    ["Emotion_Neutral", "Age_below20", "E_Asian", "G_Female"],
    ["Emotion_Angry", "Age_above_50", "E_White", "G_ Male"],
)


@dataclass(frozen=True, slots=True)
class TcsSample:
    """A written sample and what parsing and downloading it must give.

    Attributes:
        jsonl: The TCS JSON Lines file.
        plan: JSON file describing every route (read back by :func:`load_routes`).
        routes: Full URL -> route, to register on a LoopbackServer used as a proxy.
        images: Expected ``ParseResult.images`` (distinct image URLs).
        records: Expected number of face records at parse stage.
        rejections: Expected rejection count per reason code at parse stage.
        outcomes: URL -> ``ok`` or the reason code a downloader should end with, given a
            client timeout below ``slow_delay`` and at least two retries.
    """

    jsonl: Path
    plan: Path
    routes: dict[str, Route]
    images: int
    records: int
    rejections: dict[str, int]
    outcomes: dict[str, str]


@dataclass(frozen=True, slots=True)
class _Face:
    """A face the parser must keep: pixel box in displayed coordinates plus raw labels."""

    box: tuple[int, int, int, int]
    labels: Sequence[str]
    inverted: bool = False


@dataclass(slots=True)
class _Writer:
    """Accumulates lines, image files, the route plan and the expected counts."""

    host: str
    out_dir: Path
    rng: random.Random
    lines: list[str] = field(default_factory=list)
    plan: dict[str, dict[str, object]] = field(default_factory=dict)
    expected: Counter[str] = field(default_factory=Counter)
    outcomes: dict[str, str] = field(default_factory=dict)
    images: int = 0
    records: int = 0

    def image(
        self,
        name: str,
        size: tuple[int, int],
        faces: Sequence[_Face | dict[str, object]],
        *,
        kind: str = "jpeg",
        annotation: Literal["faces", "empty", "null"] = "faces",
        route: dict[str, object] | None = None,
        outcome: str = "ok",
    ) -> str:
        """Draw one image, write its file and its line, and plan its route.

        ``faces`` holds kept faces (:class:`_Face`, drawn) and raw face dicts (written as
        given, not drawn). ``annotation`` ``empty``/``null`` writes ``[]``/``null`` instead.
        """
        url = f"{self.host}/{name}"
        width, height = size
        drawn = [f.box for f in faces if isinstance(f, _Face)]
        body, fmt = _draw_kind(kind, width, height, drawn, self.rng)
        (self.out_dir / IMAGES_DIR / name).write_bytes(body)
        entries = [self._face_json(f, width, height) if isinstance(f, _Face) else f for f in faces]
        written = {"faces": entries, "empty": [], "null": None}[annotation]
        self.line({"content": url, "annotation": written})
        self.images += 1
        self.records += len(drawn) if annotation == "faces" else 0
        self.plan[url] = {"file": f"{IMAGES_DIR}/{name}", "content_type": CONTENT_TYPES[fmt], **(route or {})}
        self.outcomes[url] = outcome
        return url

    def line(self, obj: dict[str, object]) -> None:
        """Append one line in DataTurks' key order with its extras and metadata."""
        full = {**obj, "extras": None, "metadata": {"sec_taken": self.rng.randint(5, 60), "last_updated_by": "sample"}}
        self.lines.append(json.dumps(full))

    def expect(self, reason: Reason, n: int = 1) -> None:
        self.expected[str(reason)] += n

    @staticmethod
    def _face_json(face: _Face, width: int, height: int) -> dict[str, object]:
        x0, y0, x1, y1 = face.box
        corners = [
            {"x": _fraction(x0, width), "y": _fraction(y0, height)},
            {"x": _fraction(x1, width), "y": _fraction(y1, height)},
        ]
        if face.inverted:
            corners.reverse()
        return {
            "label": list(face.labels),
            "notes": "",
            "points": corners,
            "imageWidth": width,
            "imageHeight": height,
        }


def write_tcs_sample(
    out_dir: Path,
    seed: int = 0,
    host: str = DEFAULT_HOST,
    *,
    slow_delay: float = 12.0,
) -> TcsSample:
    """Write a synthetic TCS export with every known quirk and a plan of failing URLs.

    Args:
        out_dir: Folder for ``faces.jsonl``, ``routes.json`` and ``images/``.
        seed: Seed for pixels and metadata (same seed, same bytes).
        host: Base of every image URL; a host that does not resolve, like the real data's,
            so images are only reachable through the loopback proxy.
        slow_delay: Seconds the slow route waits before every answer. The default exceeds
            params.yaml ``download.timeout_s`` (10 s) so that URL times out; each retry
            waits a full timeout, so a demo wanting speed should lower both.

    Returns:
        Paths, routes and the counts that parsing and downloading must give.
    """
    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    w = _Writer(host=host.rstrip("/"), out_dir=out_dir, rng=random.Random(seed))
    _write_plain_images(w)
    _write_quirky_images(w)
    _write_failing_images(w, slow_delay)
    _write_bad_lines(w)

    jsonl = out_dir / JSONL_NAME
    jsonl.write_text("\n".join(w.lines) + "\n", encoding="utf-8")
    expected = {
        "images": w.images,
        "records": w.records,
        "rejections": dict(sorted(w.expected.items())),
        "outcomes": w.outcomes,
    }
    plan = out_dir / PLAN_NAME
    plan.write_text(json.dumps({"host": w.host, "routes": w.plan, "expected": expected}, indent=1, sort_keys=True))
    logger.info("wrote TCS sample %s: %d images, %d faces", jsonl, w.images, w.records)
    return TcsSample(
        jsonl=jsonl,
        plan=plan,
        routes=load_routes(out_dir),
        images=w.images,
        records=w.records,
        rejections=dict(w.expected),
        outcomes=dict(w.outcomes),
    )


def load_routes(out_dir: Path) -> dict[str, Route]:
    """Rebuild the routes of a sample written by :func:`write_tcs_sample` from its files.

    Raises:
        FileNotFoundError: ``routes.json`` or an image it names is missing (re-run the
            sample step).
    """
    out_dir = Path(out_dir)
    plan = json.loads((out_dir / PLAN_NAME).read_text(encoding="utf-8"))
    routes: dict[str, Route] = {}
    for url, spec in plan["routes"].items():
        spec = dict(spec)
        file = spec.pop("file", None)
        text = spec.pop("text", None)
        truncate = spec.pop("truncate", False)
        body = (out_dir / file).read_bytes() if file else str(text or "").encode()
        if truncate:
            body = body[: len(body) // 2]
        routes[url] = Route(body=body, **spec)
    return routes


def routes_for_jsonl(jsonl: Path, seed: int = 0) -> dict[str, Route]:
    """Draw a stand-in image for every URL of an existing TCS export (the real one).

    Each image has the declared width and height, a drawn face in every usable box and the
    format its URL extension suggests (``.png``, ``.gif``, else JPEG). The background is
    coarse block noise so a 9400x6266 image still takes a fraction of a second.

    Args:
        jsonl: TCS JSON Lines file.
        seed: Seed; each URL gets its own generator, so the result is order independent.

    Returns:
        Full URL -> route with the encoded image and its content type.
    """
    lines = Path(jsonl).read_text(encoding="utf-8", errors="replace").splitlines()
    parsed = parse_tcs_lines(lines, origin=str(jsonl))
    declared: dict[str, tuple[int, int, list[tuple[int, int, int, int]]]] = {}
    for url in _urls(lines):
        declared.setdefault(url, (*DEFAULT_SIZE, []))
    for record in parsed.records:
        if record.box is None or record.image_width is None or record.image_height is None:
            continue
        _, _, boxes = declared[record.image_ref]
        declared[record.image_ref] = (record.image_width, record.image_height, boxes)
        b = record.box
        boxes.append((round(b.x0), round(b.y0), round(b.x1), round(b.y1)))

    def draw(item: tuple[str, tuple[int, int, list[tuple[int, int, int, int]]]]) -> tuple[str, Route]:
        url, (width, height, boxes) = item
        fmt = _format_for(url)
        body = _encode_fast(_cheap_face_image(width, height, boxes, random.Random(f"{seed}:{url}")), fmt)
        return url, Route(body=body, content_type=CONTENT_TYPES[fmt])

    # PIL releases the GIL while resizing and encoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        routes = dict(pool.map(draw, declared.items()))
    logger.info("drew %d stand-in images for %s", len(routes), jsonl)
    return routes


# --- sample content -------------------------------------------------------------------------


def _write_plain_images(w: _Writer) -> None:
    """Well-formed images covering formats, modes, orientation and face sizes (30-300 px)."""
    ls = _LABEL_SETS
    w.image("portrait_01.jpg", (640, 480), [_Face((220, 120, 420, 360), ls[0])])
    w.image(
        "group_02.jpg",
        (800, 600),
        [_Face((60, 100, 160, 220), ls[1]), _Face((330, 90, 420, 200), ls[2]), _Face((600, 120, 660, 190), ls[3])],
    )
    w.image(
        "screen_03.png", (584, 268), [_Face((100, 80, 130, 116), ls[4]), _Face((400, 90, 432, 128), ls[0])], kind="png"
    )
    w.image("alpha_04.png", (500, 500), [_Face((150, 120, 330, 340), ls[1])], kind="rgba")
    w.image("gray_05.jpg", (400, 400), [_Face((120, 100, 280, 300), ls[2])], kind="gray")
    w.image(
        "palette_06.gif", (293, 195), [_Face((30, 40, 90, 115), ls[3]), _Face((180, 50, 240, 125), ls[4])], kind="gif"
    )
    w.image("rotated_07.jpg", (480, 640), [_Face((140, 160, 340, 400), ls[0])], kind="exif6")
    w.image("large_08.jpg", (3000, 2000), [_Face((900, 500, 1200, 860), ls[1]), _Face((2200, 700, 2320, 850), ls[2])])
    w.image(
        "crowd_09.jpg",
        (1024, 768),
        [_Face((100 + 200 * i, 300, 130 + 200 * i, 336), ls[i % len(ls)]) for i in range(4)],
    )


def _write_quirky_images(w: _Writer) -> None:
    """Boxes and labels the parser must normalise, keep with a rejection, or reject."""
    ls = _LABEL_SETS
    # Corners in reverse order: normalised, not an error.
    w.image("inverted_10.jpg", (640, 480), [_Face((200, 100, 380, 320), ls[3], inverted=True)])
    # A box touching the left and bottom edges: fractions 0 and 1 are written as ints.
    w.image("edges_11.jpg", (500, 400), [_Face((0, 150, 200, 400), ls[4])])
    w.image(
        "labels_12.jpg",
        (960, 480),
        [
            _Face((20, 100, 140, 250), ["G_ Female", "E_Asian", "Emotion_Neutral", "Age_below20"]),
            _Face((180, 100, 300, 250), ["others", "Emotion_Happy", "Age_30_40"]),
            _Face((340, 100, 460, 250), ["Emotion_Confused", "G_Male"]),
            _Face((500, 100, 620, 250), ["E_Hispanic", "E_Arab", "G_Male", "Age_20_30"]),
            _Face((660, 100, 780, 250), ["Not_Face"]),
            _Face((820, 100, 940, 250), ["Not_Face", "Age_above_50", "G_Male"]),
        ],
    )
    w.expect(Reason.AMBIGUOUS_LABEL)
    w.expect(Reason.UNKNOWN_LABEL)
    w.expect(Reason.CONFLICTING_LABELS)  # E_Hispanic + E_Arab
    w.expect(Reason.CONFLICTING_LABELS, 2)  # labels on a Not_Face box
    size = {"imageWidth": 640, "imageHeight": 480}
    w.image(
        "bad_boxes_13.jpg",
        (640, 480),
        [
            _Face((250, 120, 400, 300), _LABEL_SETS[0]),
            {"label": [], "notes": "", "points": [{"x": 0.5, "y": 0.5}, {"x": 0.5, "y": 0.5}], **size},
            {"label": ["G_Male"], "notes": "", "points": [{"x": "0.1", "y": 0.2}, {"x": 0.3, "y": 0.4}], **size},
            {"label": ["G_Male"], "notes": "", "points": [{"x": 0.1, "y": 0.2}], **size},
            {"label": ["G_Male"], "notes": "", "points": [{"x": 0.6, "y": 0.2}, {"x": 0.8, "y": 0.4}]},
        ],
    )
    w.expect(Reason.DEGENERATE_BOX)
    w.expect(Reason.BAD_GEOMETRY, 3)
    w.image("empty_14.jpg", (640, 480), [], annotation="empty")
    w.image("unlabelled_15.jpg", (640, 480), [], annotation="null")
    w.expect(Reason.NO_FACES, 2)


def _write_failing_images(w: _Writer, slow_delay: float) -> None:
    """One image per injected HTTP behaviour; the annotation itself is well-formed."""
    face = [_Face((200, 120, 400, 360), _LABEL_SETS[1])]
    w.image("missing_16.jpg", (640, 480), face, route={"status": 404}, outcome=str(Reason.HTTP_ERROR))
    w.image("flaky_17.jpg", (640, 480), face, route={"fail_times": 2, "fail_status": 500})
    w.image("throttled_18.jpg", (640, 480), face, route={"fail_times": 1, "fail_status": 429, "retry_after": 1.0})
    w.image("slow_19.jpg", (640, 480), face, route={"delay": slow_delay}, outcome=str(Reason.TIMEOUT))
    html: dict[str, object] = {
        "file": None,
        "text": "<html><body>Image moved</body></html>",
        "content_type": "text/html",
    }
    w.image("page_20.jpg", (640, 480), face, route=html, outcome=str(Reason.NOT_AN_IMAGE))
    w.image("truncated_21.jpg", (640, 480), face, route={"truncate": True}, outcome=str(Reason.CORRUPT_IMAGE))
    moved = f"{w.host}/moved/redirect_22.jpg"
    url = w.image("redirect_22.jpg", (640, 480), face, route={"redirect_to": moved})
    w.plan[moved] = {**w.plan[url], "redirect_to": None}


def _write_bad_lines(w: _Writer) -> None:
    """Lines that yield no image at all (plus a blank line, which is skipped)."""
    w.lines.append(f'{{"content": "{w.host}/broken_23.jpg", "annotation": [{{"label": ["G_Male"], "points": [')
    w.expect(Reason.MALFORMED_LINE)
    w.lines.append("")
    w.line({"annotation": [{"label": ["G_Male"], "points": [{"x": 0.1, "y": 0.1}, {"x": 0.2, "y": 0.2}]}]})
    w.line({"content": 42, "annotation": None})
    w.expect(Reason.MISSING_FIELD, 2)


# --- drawing --------------------------------------------------------------------------------


def _fraction(pixels: int, size: int) -> float | int:
    """Fraction of the image side; exact 0 and 1 as ints, as some DataTurks lines have them."""
    value = pixels / size
    return int(value) if value in (0.0, 1.0) else value


def _draw_kind(
    kind: str,
    width: int,
    height: int,
    boxes: list[tuple[int, int, int, int]],
    rng: random.Random,
) -> tuple[bytes, str]:
    """Encoded image of one sample kind and its PIL format name."""
    image = face_image(width, height, boxes, rng)
    if kind == "jpeg":
        return encode(image, "JPEG"), "JPEG"
    if kind == "png":
        return encode(image, "PNG"), "PNG"
    if kind == "rgba":
        alpha = Image.new("L", image.size, 0)
        alpha.paste(255, (20, 20, width - 20, height - 20))
        image.putalpha(alpha)
        return encode(image, "PNG"), "PNG"
    if kind == "gray":
        buf = io.BytesIO()
        image.convert("L").save(buf, format="JPEG", quality=90)  # encode() would make it RGB
        return buf.getvalue(), "JPEG"
    if kind == "gif":
        return encode(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF"), "GIF"
    if kind == "exif6":
        # Store the pixels rotated 90° counter-clockwise; orientation 6 tells viewers to
        # rotate them back, so the displayed image (what was annotated) is width x height.
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        return encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes()), "JPEG"
    raise ValueError(f"unknown sample image kind {kind!r}")


def _urls(lines: list[str]) -> list[str]:
    """Image URLs of the lines that parse, in file order."""
    urls = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        url = obj.get("content") if isinstance(obj, dict) else None
        if isinstance(url, str) and url.strip():
            urls.append(url.strip())
    return urls


def _format_for(url: str) -> str:
    suffix = Path(urlsplit(url).path).suffix.lower()
    return {".png": "PNG", ".gif": "GIF"}.get(suffix, "JPEG")


def _cheap_face_image(
    width: int,
    height: int,
    boxes: list[tuple[int, int, int, int]],
    rng: random.Random,
) -> Image.Image:
    """Block-noise background (about 64 blocks along the long side) with drawn faces.

    Random bytes for every pixel would cost more than the encoding; blocks keep it cheap.
    """
    block = max(8, max(width, height) // 64)
    cols, rows = -(-width // block), -(-height // block)
    small = Image.frombytes("RGB", (cols, rows), rng.randbytes(3 * cols * rows))
    image = small.resize((width, height), Image.Resampling.NEAREST)
    for x0, y0, x1, y1 in boxes:
        box = (max(0, x0), max(0, y0), min(width, x1), min(height, y1))
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            draw_face(image, box, rng)
    return image


def _encode_fast(image: Image.Image, fmt: str) -> bytes:
    if fmt == "PNG":
        return encode(image, "PNG", compress_level=1)
    if fmt == "GIF":
        return encode(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF")
    return encode(image, "JPEG", quality=80)
