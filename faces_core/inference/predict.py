"""Attribute predictions for images: a reusable :class:`Predictor` and image loading for ``faces predict``.

The predictor loads a trained model once and runs batches of images through it. It knows
nothing about files or faces: ``faces predict`` finds the faces of each image with the
annotate stage's detector (a group photo gives one answer per face) and hands it the crops;
with ``whole_image`` (pre-cropped faces) each whole image is one face.

Loading reuses the ingest code paths, so an image is read exactly as ingest read the
training crops: URLs are fetched by :func:`faces_core.download.download_all` (http
and https only, timeout, retries, size cap, magic-byte sniffing) into a temporary store,
and files are decoded by :func:`faces_core.validate.load_rgb` (EXIF orientation
applied, transparency composited on white, pixel-count guard). A bad input becomes an
:class:`InputError` with a reason code from :mod:`faces_core.errors`, never an exception.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypedDict

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from faces_core.download import DownloadSettings, ImageStore, download_all
from faces_core.errors import Reason
from faces_core.facechip import FaceEmbedder
from faces_core.files import read_regular
from faces_core.inference.crop import crop_face
from faces_core.inference.detect import FaceDetector, prepare
from faces_core.inference.device import resolve_device
from faces_core.inference.model import FACE_TRUNK, MAX_MODEL_BYTES, face_embedder, load_model, uses_detector_boxes
from faces_core.inference.reframe import crop_box, find_in_crops
from faces_core.inference.settings import DetectSettings, PredictSettings
from faces_core.inference.transforms import eval_transform
from faces_core.validate import ImageRejected, ValidateSettings, load_rgb

log = logging.getLogger(__name__)

_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ALPHA_MODES: Final = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class AttributePrediction(TypedDict):
    """One attribute of one face: the most probable class, its probability, and all of them."""

    label: str
    probability: float
    probabilities: dict[str, float]


@dataclass(frozen=True, slots=True)
class InputError:
    """An input that could not be turned into an image.

    Attributes:
        input: The path or URL as given.
        reason: Code from :class:`faces_core.errors.Reason`.
        message: What went wrong, with the offending value.
    """

    input: str
    reason: Reason
    message: str

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``faces predict`` prints for this input."""
        return {"input": self.input, "error": {"reason": str(self.reason), "message": self.message}}


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """An input decoded to upright 8-bit RGB."""

    input: str
    image: Image.Image


def _rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparency composited on white as ingest does for the training crops."""
    if image.mode in _ALPHA_MODES or (image.mode != "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def to_tensor(image: torch.Tensor | Image.Image) -> torch.Tensor:
    """An image as ``uint8 [3, H, W]``: PIL images are converted, 1-channel tensors repeated.

    Raises:
        ValueError: a tensor that is not ``uint8`` ``[1 or 3, H, W]``.
    """
    if isinstance(image, Image.Image):
        return tvf.pil_to_tensor(_rgb(image))
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"expected a uint8 image tensor [3, H, W] (or [1, H, W]), got {image.dtype} {list(image.shape)}; "
            "decode with torchvision.io.decode_image(..., mode=ImageReadMode.RGB)"
        )
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


class Predictor:
    """A trained multi-task model, loaded once, answering batches of face images.

    Arguments:
        model_dir: Directory of ``model.pt`` and ``model.json`` (what ``faces train`` writes).

    Keyword Arguments:
        device: ``auto`` (default; CUDA when present), ``cuda`` or ``cpu``.
        batch_size: Images per forward pass (default 32).

    Example:
        >>> predictor = Predictor("models")
        >>> predictor.predict([Image.open("face.jpg")])[0]["gender"]
        {'label': 'female', 'probability': 0.93, 'probabilities': {'male': 0.07, 'female': 0.93}}
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        device: str = "auto",
        batch_size: int = 32,
        all_heads: bool = False,
        max_model_bytes: int = MAX_MODEL_BYTES,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device, section="predict")
        self.model, self.meta = load_model(model_dir, self.device, max_model_bytes)
        self.batch_size = batch_size
        self.transform = eval_transform(self.meta.input_size)
        self.embedder: FaceEmbedder | None = None
        self.reframer: FaceDetector | None = None
        if self.meta.backbone == FACE_TRUNK:
            self.embedder = face_embedder(self.model, self.meta)
            if uses_detector_boxes(self.meta):  # a crop is read from the box found in it, as in training
                self.reframer = FaceDetector(DetectSettings(device="cpu" if self.device.type == "cpu" else "auto"))
        self.heads = list(self.meta.attributes) if all_heads else self.meta.published()
        withheld = [a for a in self.meta.attributes if a not in self.heads]
        if withheld:
            reasons = ", ".join(f"{a} ({_why_withheld(self.meta.heads.get(a, {}))})" for a in withheld)
            log.warning(
                "heads left empty because they do not beat their majority-class floor in cross-validation: %s; "
                "pass --all-heads to write them anyway",
                reasons,
            )

    @property
    def attributes(self) -> dict[str, list[str]]:
        """attribute -> class names of every head written, in model order."""
        return {a: list(c) for a, c in self.meta.attributes.items() if a in self.heads}

    @property
    def uses_boxes(self) -> bool:
        """Whether the model wants the whole image and the face's box (:meth:`predict_boxes`)
        rather than a crop: the face trunk aligns its own chip from landmarks in the box."""
        return self.embedder is not None

    @torch.inference_mode()
    def predict_boxes(
        self, image: np.ndarray, boxes: Sequence[tuple[float, float, float, float]]
    ) -> list[dict[str, AttributePrediction]]:
        """Predictions for the faces in ``boxes`` (pixels of ``image``, ``uint8 [H, W, 3]`` RGB).

        With the face trunk this is the one crop path (:mod:`faces_core.facechip`); a CNN
        model gets each box's plain crop.
        """
        if not boxes:
            return []
        if self.embedder is None:
            picture = Image.fromarray(image)
            crops = [picture.crop((round(b[0]), round(b[1]), round(b[2]), round(b[3]))) for b in boxes]
            return self.predict(crops)
        features = torch.from_numpy(self.embedder.embed(image, boxes))
        return self._answer(self.model(features.to(self.device)))

    def _answer(self, logits: dict[str, torch.Tensor]) -> list[dict[str, AttributePrediction]]:
        probabilities = {head: torch.softmax(logits[head].float(), dim=1).cpu() for head in self.heads}
        n = next(iter(logits.values())).shape[0] if logits else 0
        out: list[dict[str, AttributePrediction]] = []
        for i in range(n):
            face: dict[str, AttributePrediction] = {}
            for head in self.heads:
                classes = self.meta.attributes[head]
                p = probabilities[head][i]
                best = int(p.argmax())
                face[head] = {
                    "label": classes[best],
                    "probability": float(p[best]),
                    "probabilities": {name: float(v) for name, v in zip(classes, p.tolist(), strict=True)},
                }
            out.append(face)
        return out

    def _batches(self, images: Sequence[torch.Tensor | Image.Image]) -> Iterator[torch.Tensor]:
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            yield torch.stack([self.transform(to_tensor(image)) for image in chunk])

    @torch.inference_mode()
    def predict(self, images: Sequence[torch.Tensor | Image.Image]) -> list[dict[str, AttributePrediction]]:
        """Class probabilities per attribute for each image (a face crop, any size).

        Each image is resized to the model's input size and normalised exactly as evaluation
        does (``eval_transform``), then run in batches of ``batch_size`` on the device (bf16
        autocast on CUDA; probabilities are computed in float32).

        Args:
            images: ``uint8 [3, H, W]`` tensors (RGB) or PIL images (any mode).

        Returns:
            One dict per image, in input order: attribute -> label, its probability and the
            probability of every class.
        """
        if self.embedder is not None:
            out_faces: list[dict[str, AttributePrediction]] = []
            for start in range(0, len(images), self.batch_size):
                chunk = [_pixels(image) for image in images[start : start + self.batch_size]]
                found = find_in_crops(chunk, self.reframer) if self.reframer is not None else None
                for i, pixels in enumerate(chunk):
                    box = crop_box(pixels, found[i] if found is not None else None)
                    out_faces.extend(self.predict_boxes(pixels, [box]))
            return out_faces
        cuda = self.device.type == "cuda"
        out: list[dict[str, AttributePrediction]] = []
        for batch in self._batches(images):
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = self.model(batch.to(self.device, non_blocking=True))
            out.extend(self._answer(logits))
        return out


def _pixels(image: torch.Tensor | Image.Image) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB pixels of a PIL image or a ``[3, H, W]`` tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(_rgb(image))
    tensor = to_tensor(image)
    return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())


def _why_withheld(report: dict[str, Any]) -> str:
    f1 = report.get("macro_f1", {}).get("pooled")
    floor = report.get("floor_macro_f1", {}).get("pooled")
    if f1 is None or floor is None:
        return "not validated"
    return f"CV macro-F1 {f1:.2f} vs floor {floor:.2f}"


def is_url(value: str) -> bool:
    """Whether ``value`` starts with a URL scheme (``http://``, ``ftp://``, ...)."""
    return _SCHEME.match(value) is not None


def _load_file(name: str, path: Path, settings: PredictSettings) -> LoadedImage | InputError:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return InputError(name, Reason.UNREADABLE_FILE, f"{path}: {exc.strerror or exc}")
    if path.is_file() and size > settings.max_bytes:
        return InputError(name, Reason.TOO_LARGE, f"{path} has {size} bytes > {settings.max_bytes}")
    try:  # bytes read from a regular file only: a FIFO or device is refused unopened, never waited on
        data = read_regular(path, settings.max_bytes)
    except OSError as exc:
        return InputError(name, Reason.UNREADABLE_FILE, f"{path}: {exc.strerror or exc}")
    try:
        return LoadedImage(name, load_rgb(path, ValidateSettings(max_image_pixels=settings.max_image_pixels), data))
    except ImageRejected as exc:
        return InputError(name, exc.reason, exc.message)


def load_images(inputs: Sequence[str], settings: PredictSettings | None = None) -> list[LoadedImage | InputError]:
    """Read local files and http(s) URLs into upright RGB images, one result per input in order.

    URLs are downloaded concurrently into a temporary directory that is removed afterwards;
    other URL schemes (``file://``, ``ftp://``) are refused so a URL cannot read local files.

    Args:
        inputs: Paths or ``http://`` / ``https://`` URLs; duplicates are loaded once.
        settings: Timeouts and limits (defaults when None).

    Returns:
        A :class:`LoadedImage` or an :class:`InputError` for every input.
    """
    settings = settings or PredictSettings()
    urls = [value for value in inputs if value.lower().startswith(("http://", "https://"))]
    results: dict[str, LoadedImage | InputError] = {}
    with tempfile.TemporaryDirectory(prefix="faces-predict-") as tmp:
        if urls:
            download = DownloadSettings(
                concurrency=min(8, len(set(urls))),
                timeout_s=settings.timeout_s,
                retries=settings.retries,
                max_bytes=settings.max_bytes,
                # Ingest's URL policy and deadlines: the same rules for every URL faces fetches.
                allow_private_hosts=settings.allow_private_hosts,
                attempt_timeout_s=settings.attempt_timeout_s,
                url_timeout_s=settings.url_timeout_s,
            )
            report = download_all(urls, ImageStore(tmp), download, source="predict")
            for rejection in report.rejections:
                results[rejection.item] = InputError(rejection.item, rejection.reason, rejection.message)
            for url, stored in report.results.items():
                loaded = _load_file(url, stored.path, settings)
                if isinstance(loaded, InputError):
                    loaded = InputError(url, loaded.reason, loaded.message.replace(str(stored.path), url))
                results[url] = loaded
        for value in dict.fromkeys(inputs):
            if value in results:
                continue
            match = _SCHEME.match(value)
            if match:
                results[value] = InputError(
                    value,
                    Reason.UNREADABLE_FILE,
                    f"unsupported URL scheme {match.group(1)!r}: give an http(s) URL or a local path",
                )
            else:
                results[value] = _load_file(value, Path(value).expanduser(), settings)
    return [results[value] for value in inputs]


def predict_inputs(
    predictor: Predictor,
    inputs: Sequence[str],
    settings: PredictSettings | None = None,
    probabilities: bool = False,
    detector: FaceDetector | None = None,
    crop_margin: float = 0.1,
    align: bool = False,
) -> list[dict[str, Any]]:
    """JSON objects for ``faces predict``: one per detected face, one per bad input.

    A face object holds ``input``, ``face`` (index in the image, left to right), ``box``
    (``[x0, y0, x1, y1]`` integer pixels of the upright image: the detected box, or the whole
    image without a detector) and ``attributes`` (attribute -> ``label`` and ``probability``,
    plus ``probabilities`` when asked). A bad input gives ``{"input": ..., "error": {"reason": ...,
    "message": ...}}``; an image in which the detector finds no face gives the error reason
    ``no_faces``. Output is in input order.

    Args:
        predictor: The attribute model.
        inputs: Paths or http(s) URLs.
        settings: Loading limits (defaults when None).
        probabilities: Also give every class's probability.
        detector: Finds the faces to predict; None treats each whole image as one face.
        crop_margin: Fraction of a detected box added on each side of its crop.
        align: Level each crop by its eye landmarks.
    """
    loaded = load_images(inputs, settings)
    images = [item for item in loaded if isinstance(item, LoadedImage)]
    boxes: list[list[tuple[int, int, int, int]]] = []
    crops: list[Image.Image] = []
    if detector is None:
        boxes = [[(0, 0, *item.image.size)] for item in images]
        crops = [item.image for item in images]
    else:
        detections = detector.detect([prepare(item.image, detector.settings.max_side) for item in images])
        for item, faces in zip(images, detections, strict=True):
            faces = sorted(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2))
            boxes.append([(round(f.box[0]), round(f.box[1]), round(f.box[2]), round(f.box[3])) for f in faces])
            if not predictor.uses_boxes:  # the face trunk cuts its own chips from the boxes
                crops.extend(crop_face(item.image, face, 1.0, crop_margin, align) for face in faces)
    if predictor.uses_boxes:  # the face trunk aligns its own chips from the boxes
        answers: list[dict[str, AttributePrediction]] = []
        for item, image_boxes in zip(images, boxes, strict=True):
            answers.extend(predictor.predict_boxes(np.asarray(item.image.convert("RGB")), image_boxes))
        predictions = iter(answers)
    else:
        predictions = iter(predictor.predict(crops))
    found = iter(boxes)
    out: list[dict[str, Any]] = []
    for result in loaded:
        if isinstance(result, InputError):
            out.append(result.to_json())
            continue
        item = result
        image_boxes = next(found)
        if not image_boxes:
            width, height = item.image.size
            message = f"{item.input}: the detector found no face in this {width}x{height} image"
            out.append(InputError(item.input, Reason.NO_FACES, message).to_json())
        for index, box in enumerate(image_boxes):
            attributes: dict[str, Any] = {}
            for head, prediction in next(predictions).items():
                entry: dict[str, Any] = {
                    "label": prediction["label"],
                    "probability": round(prediction["probability"], 4),
                }
                if probabilities:
                    entry["probabilities"] = {k: round(v, 4) for k, v in prediction["probabilities"].items()}
                attributes[head] = entry
            out.append({"input": item.input, "face": index, "box": list(box), "attributes": attributes})
    return out
