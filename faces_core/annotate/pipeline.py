"""Annotate shards of files: decode in threads, detect in batches, predict attributes, commit.

One shard (many files) is the unit of work and of commit: :func:`annotate_shard` reads its
files in a thread pool that keeps decoding while the detector runs (a bounded queue of
frames keeps memory flat), groups frames of equal canvas into detector batches, crops every
face (optionally turned upright by the eye landmarks), predicts all attributes of the
batch's faces at once, and commits the shard's Parquet parts (:mod:`faces_core.annotate.store`).
A file already annotated with the same content, model version and detector is skipped; a bad
file becomes an error row and the shard goes on.

:func:`annotate_folders` runs a whole annotation without Prefect (the flow runs the same
steps as tasks); both take their numbers from :class:`AnnotateSettings`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from PIL import Image

from faces_core.annotate import store
from faces_core.annotate.inputs import (
    SOURCE,
    FileInfo,
    FileJob,
    Frame,
    ReadSettings,
    find_files,
    identify,
    media_rejection,
    read_frames,
    relative_jobs,
)
from faces_core.annotate.settings import AnnotateSettings
from faces_core.errors import Rejection
from faces_core.inference.crop import crop_face
from faces_core.inference.detect import DetectSettings, Face, FaceDetector, canvas_size
from faces_core.storage import output_error
from faces_core.taxonomy import ATTRIBUTE_NAMES
from faces_core.validate import ImageRejected

log = logging.getLogger(__name__)

NO_MODEL: Final = "none"
"""``model_version`` of rows annotated without an attribute model (detection only)."""


def detector_id(settings: DetectSettings) -> str:
    """Short hash of the settings that change detections (not device or batch size)."""
    values = {k: v for k, v in asdict(settings).items() if k not in ("device", "batch_size")}
    return "mtcnn-" + hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def model_version(model_dir: str | os.PathLike[str] | None, all_heads: bool = False) -> str:
    """``version`` from ``model_dir/model.json``, or :data:`NO_MODEL` when there is no model.

    With ``all_heads`` on a model that withholds heads, the version gains ``+all-heads``: the
    rows differ (the withheld columns are filled), so files annotated without it are redone.
    """
    if model_dir is None:
        return NO_MODEL
    from faces_core.inference.model import META_FILE, MODEL_FILE, read_meta

    directory = Path(model_dir)
    if not (directory / META_FILE).exists() or not (directory / MODEL_FILE).exists():
        return NO_MODEL
    meta = read_meta(directory / META_FILE)  # a broken model.json: ModelLoadError, one line
    version = meta.version or hashlib.sha256((directory / META_FILE).read_bytes()).hexdigest()[:12]
    if all_heads and len(meta.published()) < len(meta.attributes):
        version += "+all-heads"
    return version


class Engine:
    """The detector and, when a trained model exists, the attribute predictor, loaded once.

    Arguments:
        model_dir: Directory of ``model.pt`` + ``model.json``; None or a folder without a
            model gives detection only (logged once).
        settings: Run settings (detector, device, batch sizes).
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None, settings: AnnotateSettings) -> None:
        self.detector = FaceDetector(settings.detect)
        self.detector_id = detector_id(settings.detect)
        self.model_version = model_version(model_dir, settings.all_heads)
        self.predictor: Any = None
        if self.model_version == NO_MODEL:
            log.warning(
                "no trained model in %s: detecting faces only (attribute columns stay empty); "
                "train one with `faces train` or pass --model DIR",
                model_dir,
            )
        else:
            from faces_core.inference.predict import Predictor

            device = "cpu" if self.detector.device.type == "cpu" else "cuda"
            self.predictor = Predictor(
                model_dir or "",
                device=device,
                batch_size=settings.predict_batch_size,
                all_heads=settings.all_heads,
                max_model_bytes=settings.max_model_bytes,
            )
            log.info("attributes from model %s (version %s)", model_dir, self.model_version)
        self.lock = threading.Lock()


_ENGINES: dict[tuple[str, str, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def load_engine(model_dir: str | os.PathLike[str] | None, settings: AnnotateSettings) -> Engine:
    """The :class:`Engine` for these settings, loaded once per process (shards share it)."""
    key = (
        str(Path(model_dir).absolute()) if model_dir else "",
        model_version(model_dir, settings.all_heads),
        repr(settings),
    )
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = Engine(model_dir, settings)
        return _ENGINES[key]


@dataclass(slots=True)
class ShardReport:
    """What one shard did.

    Attributes:
        files: Files handled (annotated or rejected) and committed.
        skipped: Files already annotated with the same content, model and detector.
        faces: Face rows written.
        frames: Images and video frames searched.
        errors: Files rejected.
        reasons: Rejections per reason code.
        seconds: Wall time of the shard.
        parts: Part files written.
    """

    files: int = 0
    skipped: int = 0
    faces: int = 0
    frames: int = 0
    errors: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    parts: list[str] = field(default_factory=list)

    def add(self, other: ShardReport) -> None:
        """Accumulate another shard's counts into this one."""
        self.files += other.files
        self.skipped += other.skipped
        self.faces += other.faces
        self.frames += other.frames
        self.errors += other.errors
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count
        self.seconds += other.seconds
        self.parts += other.parts


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


@dataclass(slots=True)
class _FileState:
    job: FileJob
    info: FileInfo | None = None
    pending: int = 0
    frames: int = 0
    size: tuple[int, int] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    end: _FileEnd | None = None


def _read_file(job: FileJob, done: dict[str, set[str]], settings: ReadSettings, put: Callable[[object], None]) -> None:
    """Hash, skip or decode one file, handing frames and then its end marker to ``put``."""
    identified = identify(job)
    if isinstance(identified, Rejection):
        put(_FileEnd(job, None, 0, identified))
        return
    info = identified
    if info.sha256 in done.get(job.path, ()):
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
        put(_FileEnd(job, info, frames, exc.to_rejection(SOURCE, job.path, stage="decode")))
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


def _order(faces: list[Face]) -> list[Face]:
    """Faces left to right, then top to bottom: indices that do not depend on tiny score changes."""
    return sorted(faces, key=lambda f: (round((f.box[0] + f.box[2]) / 2), round((f.box[1] + f.box[3]) / 2)))


class _Shard:
    """State of one shard being annotated (see :func:`annotate_shard`)."""

    def __init__(
        self,
        engine: Engine,
        settings: AnnotateSettings,
        run_id: str,
        started: datetime | None,
        draw: Callable[[Frame, list[Face], list[dict[str, Any]]], None] | None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.run_id = run_id
        self.started = started
        self.draw = draw
        self.states: dict[str, _FileState] = {}
        self.groups: dict[tuple[int, int], list[Frame]] = {}
        self.queued = 0
        self.faces: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.rejections: list[Rejection] = []
        self.report = ShardReport()

    def feed(self, item: Frame | _FileEnd) -> None:
        if isinstance(item, _FileEnd):
            state = self.states.setdefault(item.job.path, _FileState(item.job))
            state.end, state.info = item, item.info
            self._finish(state)
            return
        state = self.states.setdefault(item.info.job.path, _FileState(item.info.job, item.info))
        state.pending += 1
        state.frames += 1
        state.size = item.prepared.original_size
        key = canvas_size(item.prepared.size, self.settings.detect.pad_multiple)
        group = self.groups.setdefault(key, [])
        group.append(item)
        self.queued += 1
        if len(group) >= self.settings.detect.batch_size:
            self._detect(self.groups.pop(key))
        elif self.queued >= self.settings.prefetch_frames:
            self._detect(self.groups.pop(max(self.groups, key=lambda k: len(self.groups[k]))))

    def flush(self) -> None:
        for key in list(self.groups):
            self._detect(self.groups.pop(key))

    def _detect(self, frames: list[Frame]) -> None:
        self.queued -= len(frames)
        engine = self.engine
        with engine.lock:  # shards in threads share one detector and model
            detections = engine.detector.detect([f.prepared for f in frames])
            per_frame = [_order(faces) for faces in detections]
            crops: list[Image.Image] = []
            predictions: list[Any] = []
            if engine.predictor is not None and engine.predictor.uses_boxes:
                # the face trunk aligns its own chip from landmarks inside each detected box
                for frame, faces in zip(frames, per_frame, strict=True):
                    scale = frame.prepared.scale
                    boxes = [tuple(v * scale for v in face.box) for face in faces]
                    predictions.extend(engine.predictor.predict_boxes(frame.prepared.pixels, boxes))
            elif engine.predictor is not None:  # detection only: no crops to cut
                for frame, faces in zip(frames, per_frame, strict=True):
                    image = Image.fromarray(frame.prepared.pixels)
                    crops.extend(
                        crop_face(image, face, frame.prepared.scale, self.settings.crop_margin, self.settings.align)
                        for face in faces
                    )
                predictions = engine.predictor.predict(crops) if crops else []
        attributes = iter(predictions)
        for frame, faces in zip(frames, per_frame, strict=True):
            state = self.states[frame.info.job.path]
            labels = [next(attributes) for _ in faces] if predictions else [{} for _ in faces]
            rows = [self._face_row(frame, i, face, labels[i]) for i, face in enumerate(faces)]
            state.rows.extend(rows)
            if self.draw is not None:
                self.draw(frame, faces, rows)
            state.pending -= 1
            self.report.frames += 1
            self._finish(state)

    def _face_row(self, frame: Frame, index: int, face: Face, labels: dict[str, Any]) -> dict[str, Any]:
        width, height = frame.prepared.original_size
        row: dict[str, Any] = {
            "file": frame.info.job.path,
            "sha256": frame.info.sha256,
            "kind": frame.info.kind,
            "frame_index": frame.frame_index,
            "timestamp_s": frame.timestamp_s,
            "face": index,
            "x0": face.box[0],
            "y0": face.box[1],
            "x1": face.box[2],
            "y1": face.box[3],
            "landmarks": [c for point in face.landmarks for c in point],
            "confidence": face.confidence,
            "image_width": width,
            "image_height": height,
        }
        for name in ATTRIBUTE_NAMES:
            prediction = labels.get(name)
            row[name] = prediction["label"] if prediction else None
            row[f"{name}_probability"] = prediction["probability"] if prediction else None
        row.update(
            model_version=self.engine.model_version,
            detector=self.engine.detector_id,
            run_id=self.run_id,
            annotated_at=self.started,
        )
        return row

    def _finish(self, state: _FileState) -> None:
        end = state.end
        if end is None or state.pending:
            return
        del self.states[state.job.path]
        if end.skipped:
            self.report.skipped += 1
            return
        info, rejection = end.info, end.rejection
        width, height = state.size or (None, None)
        row = {
            "file": state.job.path,
            "sha256": info.sha256 if info else None,
            "kind": info.kind if info else None,
            "size_bytes": info.size_bytes if info else None,
            "status": "error" if rejection else "ok",
            "faces": 0 if rejection else len(state.rows),
            "frames": state.frames,
            "width": width,
            "height": height,
            "reason": str(rejection.reason) if rejection else None,
            "message": rejection.message if rejection else None,
            "model_version": self.engine.model_version,
            "detector": self.engine.detector_id,
            "run_id": self.run_id,
            "annotated_at": self.started,
        }
        self.files.append(row)
        self.report.files += 1
        if rejection is not None:
            self.rejections.append(rejection)
            self.report.errors += 1
            self.report.reasons[str(rejection.reason)] = self.report.reasons.get(str(rejection.reason), 0) + 1
            return
        self.faces.extend(state.rows)
        self.report.faces += len(state.rows)


def annotate_shard(
    jobs: Sequence[FileJob],
    out: str | os.PathLike[str],
    shard_index: int,
    run_id: str,
    started: datetime | None,
    engine: Engine,
    settings: AnnotateSettings,
    done: dict[str, set[str]] | None = None,
    draw_dir: str | os.PathLike[str] | None = None,
) -> ShardReport:
    """Annotate one shard of files and commit its parts (nothing when every file is skipped).

    Args:
        jobs: The shard's files.
        out: Output folder.
        shard_index: Number of the shard in this run (part names).
        run_id: This run's id (part names and the ``run_id`` column).
        started: This run's start time (the ``annotated_at`` column and the error log's ``time``);
            None for a reproducible run (:func:`reproducible_run_id`), whose rows carry no clock.
        engine: Detector and predictor (:func:`load_engine`).
        settings: Run settings.
        done: file -> content hashes to skip (:func:`faces_core.annotate.store.done_keys`).
        draw_dir: Folder for copies with boxes and labels drawn, or None.

    Returns:
        Counts of what the shard did.
    """
    clock = time.perf_counter()
    from faces_core.annotate.export import Drawer

    drawer = Drawer(draw_dir, settings.draw_quality) if draw_dir is not None else None
    shard = _Shard(engine, settings, run_id, started, drawer)
    reader = read_in_threads(
        jobs, done or {}, settings.read_settings(), settings.decode_threads, settings.prefetch_frames
    )
    for item in reader:
        shard.feed(item)
    shard.flush()
    if shard.states:  # every file ends once all its frames are detected
        raise RuntimeError(f"annotate: files left unfinished in shard {shard_index}: {sorted(shard.states)}")
    name = store.part_name(run_id, shard_index)
    shard.files.sort(key=lambda r: r["file"])
    shard.faces.sort(key=lambda r: (r["file"], r["frame_index"] or 0, r["face"]))
    try:
        written = store.commit_shard(
            out, name, shard.faces, shard.files, shard.rejections, timestamps=started is not None
        )
    except OSError as exc:  # a full or read-only output: one line, the shards before this one kept
        explained = output_error(exc, out, stage="annotate")
        if explained is None:
            raise
        raise explained from exc
    report = shard.report
    report.parts = [str(p) for p in written]
    report.seconds = time.perf_counter() - clock
    return report


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by start time: ``20250102T030405Z-1a2b3c``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def reproducible_run_id(jobs: Sequence[FileJob], out: str | os.PathLike[str], model_version: str, detector: str) -> str:
    """A run id taken from what the run reads, not from the clock: ``repro-<12 hex>``.

    The DVC ``annotate`` stage runs this way (``--reproducible``): the same photos, model and
    detector give byte-identical parts, so ``dvc.lock`` and ``git status`` stay unchanged
    after an identical ``dvc repro``. The parts already committed in ``out`` are part of the
    hash, so a reproducible run into a folder that holds earlier runs never takes an existing
    part's name (parts are never rewritten). Such rows have a null ``annotated_at``.
    """
    digest = hashlib.sha256()
    for text in (model_version, detector, *(job.path for job in jobs), "\0", *store.committed_parts(out)):
        digest.update(text.encode("utf-8", "surrogateescape") + b"\n")
    return f"repro-{digest.hexdigest()[:12]}"


def shards(jobs: Sequence[FileJob], size: int) -> list[list[FileJob]]:
    """Consecutive shards of at most ``size`` files."""
    size = max(1, size)
    return [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]


def done_for(jobs: Sequence[FileJob], done: dict[str, set[str]]) -> dict[str, set[str]]:
    """The part of ``done`` that concerns ``jobs`` (what a shard needs to know)."""
    return {job.path: done[job.path] for job in jobs if job.path in done}


class AnnotateSteps(Protocol):
    """How the steps of an annotate run execute; :func:`annotate_run` wires them, once for all.

    The annotate flows run them as Prefect tasks (``tasks.annotate.PrefectSteps``: a task per
    shard, a progress artifact); :class:`LocalSteps` runs them in this process (tests,
    benchmarks, scripts).
    """

    def find_files(self, inputs: Sequence[str], out: str) -> list[FileJob]:
        """Walk the input folders (never entering ``out``)."""
        ...

    def run_shards(
        self,
        chunks: Sequence[Sequence[FileJob]],
        out: str,
        run_id: str,
        started: datetime | None,
        model_dir: str | None,
        settings: AnnotateSettings,
        done: Sequence[dict[str, set[str]]],
        draw_dir: str | None,
    ) -> Iterator[tuple[int, ShardReport]]:
        """Annotate and commit every shard; (shard index, its report) as each finishes."""
        ...


@dataclass(frozen=True, slots=True)
class AnnotateRun:
    """What :func:`annotate_run` did: the counts, the run id and the model version used."""

    report: ShardReport
    run_id: str
    model_version: str


def annotate_run(
    inputs: Sequence[str],
    out: str,
    settings: AnnotateSettings,
    model_dir: str | None,
    steps: AnnotateSteps,
    files: Sequence[FileJob] | None = None,
    draw_dir: str | None = None,
    reproducible: bool = False,
) -> AnnotateRun:
    """The annotate pipeline, the one wiring of its steps: lock, recover, skip what is done, shard.

    Args:
        inputs: Folders (walked recursively) or files.
        out: Output folder (``annotations/``, ``files/``, ``errors/`` parts).
        settings: Run settings.
        model_dir: Trained attribute model; None or missing gives detection only.
        steps: How the steps run (:class:`LocalSteps`, or the flow's Prefect tasks).
        files: The files to handle instead of walking ``inputs`` (the inbox passes the settled ones).
        draw_dir: Folder for drawn copies, or None.
        reproducible: The DVC stage writing its own output: rows name files relative to the
            working directory and the run id comes from the inputs
            (:func:`reproducible_run_id`), so the same inputs give the same bytes in any clone.

    Returns:
        The counts of every shard added up (``seconds``: the run's wall time), run id, model version.
    """
    clock = time.perf_counter()
    total = ShardReport()
    with store.output_lock(out, settings.lock_wait_s):
        store.recover(out)
        jobs = list(files) if files is not None else steps.find_files(inputs, out)
        if reproducible:
            jobs = relative_jobs(jobs)
        version = model_version(model_dir, settings.all_heads)
        if version == NO_MODEL:
            log.warning("no trained model in %s: detecting faces only (attribute columns stay empty)", model_dir)
        detector = detector_id(settings.detect)
        done = store.done_keys(out, version, detector)
        started: datetime | None = None if reproducible else datetime.now(UTC)
        run_id = reproducible_run_id(jobs, out, version, detector) if started is None else new_run_id(started)
        chunks = shards(jobs, settings.shard_size)
        done_per_chunk = [done_for(chunk, done) for chunk in chunks]
        for _, report in steps.run_shards(chunks, out, run_id, started, model_dir, settings, done_per_chunk, draw_dir):
            total.add(report)
    total.seconds = time.perf_counter() - clock
    return AnnotateRun(total, run_id, version)


class LocalSteps:
    """:class:`AnnotateSteps` in this process, shard after shard.

    Args:
        on_shard: Called with (shard index, report) after each shard commits.
    """

    def __init__(self, on_shard: Callable[[int, ShardReport], None] | None = None) -> None:
        self.on_shard = on_shard

    def find_files(self, inputs: Sequence[str], out: str) -> list[FileJob]:
        return find_files(inputs, exclude=[out])

    def run_shards(
        self,
        chunks: Sequence[Sequence[FileJob]],
        out: str,
        run_id: str,
        started: datetime | None,
        model_dir: str | None,
        settings: AnnotateSettings,
        done: Sequence[dict[str, set[str]]],
        draw_dir: str | None,
    ) -> Iterator[tuple[int, ShardReport]]:
        engine = load_engine(model_dir, settings)
        for index, chunk in enumerate(chunks):
            report = annotate_shard(chunk, out, index, run_id, started, engine, settings, done[index], draw_dir)
            if self.on_shard is not None:
                self.on_shard(index, report)
            yield index, report


def annotate_folders(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    settings: AnnotateSettings | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    draw_dir: str | os.PathLike[str] | None = None,
    files: Sequence[FileJob] | None = None,
    on_shard: Callable[[int, ShardReport], None] | None = None,
) -> ShardReport:
    """:func:`annotate_run` with :class:`LocalSteps` (tests, benchmarks, scripts).

    Args:
        inputs: Folders (walked recursively) or files.
        out: Output folder (``annotations/``, ``files/``, ``errors/`` parts).
        settings: Run settings (defaults when None).
        model_dir: Trained attribute model; None or missing gives detection only.
        draw_dir: Folder for drawn copies, or None.
        files: The files to handle instead of walking ``inputs`` (the inbox passes the settled ones).
        on_shard: Called with (shard index, report) after each shard commits.

    Returns:
        The counts of every shard added up (``seconds`` is the wall time of the run).
    """
    run = annotate_run(
        [os.fspath(i) for i in inputs],
        os.fspath(out),
        settings or AnnotateSettings(),
        os.fspath(model_dir) if model_dir is not None else None,
        LocalSteps(on_shard),
        files,
        os.fspath(draw_dir) if draw_dir is not None else None,
    )
    return run.report


def summary(report: ShardReport) -> dict[str, Any]:
    """The counts of a run as plain values (flow result, table artifact, JSON)."""
    rate = report.frames / report.seconds if report.seconds > 0 else 0.0
    return {
        "files": report.files,
        "skipped": report.skipped,
        "faces": report.faces,
        "frames": report.frames,
        "errors": report.errors,
        "reasons": dict(sorted(report.reasons.items())),
        "seconds": round(report.seconds, 3),
        "images_per_s": round(rate, 2),
    }
