"""Face crops from the ingest Parquet as a torch Dataset with one target per attribute.

The needed columns are read once into flat arrays: every crop's bytes sit in one contiguous
``uint8`` buffer with an offsets array, like Arrow's own layout. DataLoader workers forked
from the main process then share those pages instead of touching (and copying) a Python
``bytes`` object per item, so memory stays flat with any number of workers.

A missing label becomes :data:`IGNORE_INDEX`, which the loss skips: TCS (gender, expression,
age range, ethnicity) and IMFDB (gender, expression, age stage, pose, ...) train together.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvf

from faces_core.inference.transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, eval_transform
from faces_core.storage import FACES_DIR, read_faces
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.settings import AugmentSettings

log = logging.getLogger(__name__)


FLIP_SWAPS: Final = {"pose": {"left": "right", "right": "left"}}
"""Labels that a horizontal flip turns into another label (a face turned left, mirrored,
is turned right). Every other attribute is unchanged by a mirror image."""

META_COLUMNS: Final = ("face_id", "source", "bucket", "subject", "image_sha256", "split", "crop_format")


@dataclass(frozen=True, slots=True)
class FaceTable:
    """Columns of a set of faces, loaded once (see module docstring).

    Attributes:
        data: All crops' encoded bytes, concatenated (uint8, shape ``[total_bytes]``).
        offsets: Start of crop ``i`` is ``offsets[i]``, end ``offsets[i + 1]`` (int64, ``[N + 1]``).
        targets: Class index per face and attribute, IGNORE_INDEX if missing (int64, ``[N, A]``).
        attributes: Attribute of each target column, in order.
        meta: face_id, source, bucket, subject, split and crop_format per face.
        boxes: The face's box in each crop (``float32 [N, 4]``, crop pixels), where the
            detector found it (:mod:`faces_core.train.boxes`); None or a ``NaN`` row: the
            whole crop, the annotator's box.
    """

    data: np.ndarray
    offsets: np.ndarray
    targets: np.ndarray
    attributes: tuple[str, ...]
    meta: dict[str, list[str]]
    boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def crop(self, index: int) -> np.ndarray:
        """The encoded bytes of face ``index`` as a view (no copy)."""
        return self.data[self.offsets[index] : self.offsets[index + 1]]

    def label_counts(self) -> dict[str, np.ndarray]:
        """Faces per class for every attribute (``ATTRIBUTES`` order)."""
        counts = {}
        for column, name in enumerate(self.attributes):
            labels = self.targets[:, column]
            counts[name] = np.bincount(labels[labels >= 0], minlength=len(ATTRIBUTES[name]))
        return counts


def subset(table: FaceTable, keep: np.ndarray) -> FaceTable:
    """The faces of ``table`` where ``keep`` is true (crops copied, order kept)."""
    index = np.flatnonzero(keep)
    pieces = [table.crop(int(i)) for i in index]
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
    meta = {k: [v[int(i)] for i in index] for k, v in table.meta.items()}
    boxes = table.boxes[index] if table.boxes is not None else None
    return FaceTable(data, offsets, table.targets[index], table.attributes, meta, boxes)


def _binary_buffers(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Flat data and int64 offsets of a binary column, copied once from Arrow."""
    array = column.combine_chunks()
    if pa.types.is_binary(array.type):
        array = array.cast(pa.large_binary())
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    start = int(offsets[0]) if len(offsets) else 0
    end = int(offsets[-1]) if len(offsets) else 0
    return data[start:end].copy(), (offsets - start).astype(np.int64)


def encode_targets(columns: Mapping[str, Sequence[str | None]], attributes: Sequence[str]) -> np.ndarray:
    """Class indices (taxonomy order) per face and attribute; IGNORE_INDEX for None or unknown."""
    n = len(next(iter(columns.values()))) if columns else 0
    targets = np.full((n, len(attributes)), IGNORE_INDEX, dtype=np.int64)
    for j, name in enumerate(attributes):
        index = {value: i for i, value in enumerate(ATTRIBUTES[name])}
        targets[:, j] = [index.get(v, IGNORE_INDEX) if v is not None else IGNORE_INDEX for v in columns[name]]
    return targets


def load_face_table(
    root: str | os.PathLike[str],
    attributes: Sequence[str] = tuple(ATTRIBUTES),
    split: str | None = None,
    source: str | None = None,
    min_side: int | None = None,
) -> FaceTable:
    """Read the faces of an ingest output (or its ``faces`` dir) once, filtered.

    Args:
        root: Ingest ``out_dir`` or its ``faces`` directory.
        attributes: Attributes to encode as targets.
        split: ``train``, ``val``, ``test`` or None (all).
        source: ``tcs``, ``imfdb`` or None.
        min_side: Keep faces whose shorter side is at least this many px.

    Returns:
        The faces in a stable order (sorted by face_id), so a seed means the same batches.
    """
    columns = [*META_COLUMNS, *attributes, "crop"]
    table = read_faces(root, min_side=min_side, split=split, source=source).to_table(columns=columns)
    if table.num_rows:
        table = table.sort_by("face_id")
    data, offsets = _binary_buffers(table.column("crop"))
    labels = {name: table.column(name).to_pylist() for name in attributes}
    meta = {name: [str(v) for v in table.column(name).to_pylist()] for name in META_COLUMNS}
    return FaceTable(data, offsets, encode_targets(labels, attributes), tuple(attributes), meta)


def dataset_version(root: str | os.PathLike[str]) -> str:
    """sha256 over the Parquet parts (relative path and bytes) of an ingest output.

    Stored in model.json as the data version: the same dataset gives the same hash on any
    machine, and any added, removed or changed part changes it.
    """
    path = Path(root)
    if (path / FACES_DIR).is_dir():
        path = path / FACES_DIR
    digest = hashlib.sha256()
    for part in sorted(path.rglob("*.parquet")):
        digest.update(part.relative_to(path).as_posix().encode() + b"\0")
        with part.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def decode_crop(encoded: np.ndarray) -> torch.Tensor:
    """Decode JPEG/PNG bytes into an RGB ``uint8`` tensor ``[3, H, W]`` (CPU)."""
    return decode_image(torch.from_numpy(encoded.copy()), mode=ImageReadMode.RGB)


def train_transform(size: int, augment: AugmentSettings) -> v2.Compose:
    """Random resized crop and colour jitter (the flip is applied with its label swap)."""
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop((size, size), scale=(augment.scale_min, 1.0), ratio=(0.85, 1.15), antialias=True)
    ]
    if augment.jitter > 0:
        steps.append(v2.ColorJitter(augment.jitter, augment.jitter, augment.jitter))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def flip_targets(targets: torch.Tensor, attributes: Sequence[str]) -> torch.Tensor:
    """Targets of the mirrored face: pose left <-> right, everything else unchanged."""
    out = targets.clone()
    for j, name in enumerate(attributes):
        swaps = FLIP_SWAPS.get(name)
        if not swaps:
            continue
        classes = ATTRIBUTES[name]
        for a, b in swaps.items():
            out[..., j][targets[..., j] == classes.index(a)] = classes.index(b)
    return out


class FaceDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Decoded, transformed crops and their targets.

    Returns:
        ``(image, targets)``: float32 ``[3, size, size]`` normalised with ImageNet mean/std,
        and int64 ``[A]`` (IGNORE_INDEX where unlabelled).
    """

    def __init__(self, table: FaceTable, size: int, augment: AugmentSettings | None = None) -> None:
        self.table = table
        self.augment = augment
        self.transform = train_transform(size, augment) if augment else eval_transform(size)
        self.targets = torch.from_numpy(table.targets)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = decode_crop(self.table.crop(index))
        targets = self.targets[index]
        if self.augment and self.augment.flip > 0 and torch.rand(()) < self.augment.flip:
            image = tvf.horizontal_flip(image)
            targets = flip_targets(targets, self.table.attributes)
        return self.transform(image), targets


class EncodedDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Undecoded crops (``uint8`` byte tensors) and targets, for batched GPU JPEG decoding."""

    def __init__(self, table: FaceTable) -> None:
        self.table = table
        self.targets = torch.from_numpy(table.targets)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.table.crop(index).copy()), self.targets[index]


def collate_encoded(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Keep encoded crops as a list (they differ in length) and stack the targets."""
    return [item[0] for item in batch], torch.stack([item[1] for item in batch])


class GpuDecoder:
    """Decode a batch of encoded crops on the GPU, resize, augment and normalise there.

    ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a whole batch with nvJPEG,
    which moves the CPU's heaviest loader step onto the GPU. Non-JPEG crops (PNG from TCS)
    are decoded on the CPU and moved over.
    """

    def __init__(self, size: int, device: torch.device, augment: AugmentSettings | None = None) -> None:
        self.size = size
        self.device = device
        self.augment = augment
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.crop = (
            v2.RandomResizedCrop((size, size), scale=(augment.scale_min, 1.0), ratio=(0.85, 1.15), antialias=True)
            if augment
            else v2.Resize((size, size), antialias=True)
        )

    def __call__(
        self, encoded: Sequence[torch.Tensor], targets: torch.Tensor, attributes: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns float32 ``[N, 3, size, size]`` on the device and the (flipped) targets."""
        from torchvision.io import decode_jpeg

        is_jpeg = [bool(len(e) > 2 and int(e[0]) == 0xFF and int(e[1]) == 0xD8) for e in encoded]
        jpegs = [e for e, j in zip(encoded, is_jpeg, strict=True) if j]
        decoded = iter(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device) if jpegs else [])
        images = [
            next(decoded) if j else decode_image(e, mode=ImageReadMode.RGB).to(self.device)
            for e, j in zip(encoded, is_jpeg, strict=True)
        ]
        batch = torch.stack([self.crop(image) for image in images]).float().div_(255)
        targets = targets.to(self.device, non_blocking=True)
        if self.augment:
            n = batch.shape[0]
            if self.augment.flip > 0:
                flip = torch.rand(n, device=self.device) < self.augment.flip
                batch = torch.where(flip.view(n, 1, 1, 1), batch.flip(-1), batch)
                targets = torch.where(flip.view(n, 1), flip_targets(targets, attributes), targets)
            if self.augment.jitter > 0:
                j = self.augment.jitter
                bright = 1 + (torch.rand(n, 1, 1, 1, device=self.device) * 2 - 1) * j
                contrast = 1 + (torch.rand(n, 1, 1, 1, device=self.device) * 2 - 1) * j
                mean = batch.mean(dim=(1, 2, 3), keepdim=True)
                batch = ((batch * bright - mean) * contrast + mean).clamp_(0, 1)
        return (batch - self.mean) / self.std, targets
