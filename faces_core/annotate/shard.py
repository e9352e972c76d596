"""Annotate one shard of files: detect in batches, predict attributes, commit its parts.

One shard (many files) is the unit of work and of commit: :func:`annotate_shard` reads its
files in threads (:mod:`faces_core.annotate.reader`), groups frames of equal canvas into
detector batches, crops every face (optionally turned upright by the eye landmarks),
predicts all attributes of the batch's faces at once, and commits the shard's Parquet parts
(:mod:`faces_core.annotate.store`). A bad file becomes an error row and the shard goes on.
:func:`run_shard` is a shard of a :class:`ShardRun` as every runner executes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from PIL import Image

from faces_core.annotate import store
from faces_core.annotate.engine import Engine, load_engine
from faces_core.annotate.inputs import FileInfo, FileJob, Frame
from faces_core.annotate.reader import _FileEnd, read_in_threads
from faces_core.annotate.settings import AnnotateSettings
from faces_core.errors import Rejection
from faces_core.inference.crop import crop_face
from faces_core.inference.detect import Face, canvas_size
from faces_core.storage import output_error
from faces_core.taxonomy import ATTRIBUTE_NAMES


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


@dataclass(slots=True)
class _FileState:
    job: FileJob
    info: FileInfo | None = None
    pending: int = 0
    frames: int = 0
    size: tuple[int, int] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    end: _FileEnd | None = None


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
            "file": frame.info.job.file,
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
            "file": state.job.file,
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


@dataclass(frozen=True, slots=True)
class ShardRun:
    """What every shard of one annotate run shares (a Prefect or Dask task gets it whole).

    Attributes:
        out: Output folder.
        run_id: This run's id (part names and the ``run_id`` column).
        started: This run's start time, or None for a reproducible run (no clock in its rows).
        model_dir: Trained attribute model; None or missing gives detection only.
        settings: Run settings.
        draw_dir: Folder for copies with boxes and labels drawn, or None.
        out_url: The object-store URL ``out`` stands for, or None: a shard then writes into its
            own machine's mirror of it and uploads its parts (:mod:`faces_core.annotate.remote`).
        model_url: The object-store URL of the model, or None: a shard fetches it where it runs.
    """

    out: str
    run_id: str
    started: datetime | None
    model_dir: str | None
    settings: AnnotateSettings
    draw_dir: str | None = None
    out_url: str | None = None
    model_url: str | None = None


def run_shard(
    run: ShardRun,
    index: int,
    jobs: Sequence[FileJob],
    done: dict[str, set[str]],
    engine: Engine | None = None,
) -> ShardReport:
    """:func:`annotate_shard` for shard ``index`` of ``run``, with ``engine`` or this process's own
    (:func:`~faces_core.annotate.engine.load_engine`, loaded once per process)."""
    if engine is None:
        engine = load_engine(run.model_dir, run.settings)
    return annotate_shard(jobs, run.out, index, run.run_id, run.started, engine, run.settings, done, run.draw_dir)
