"""dlib's face-recognition ResNet in torch, read from the same ``.dat`` file dlib loads.

dlib-bin's CPU build runs this network without BLAS: 136 ms a face on one core here, which
made the descriptors the slow half of training (13 of about 31 minutes) and of annotating a
face. The same weights in torch, with channels-last convolutions, take about 14 ms.

The file is dlib's own serialisation of ``anet_type`` from dlib's
``dnn_face_recognition_ex.cpp`` (a 29-layer ResNet with affine layers in place of batch
norm, on 150 px RGB chips, ending in a 128-d ``fc_no_bias``). Integers are a control byte
(bit 7: sign; bits 0-3: byte count) and that many little-endian bytes; a tensor is a
version, four dimensions and little-endian float32 values. Each convolution, affine and
pooling layer is found by its serialised name, in file order (input first), and the
network is built from the architecture below, checked against what the file says (kernel,
stride, padding, filters). Two dlib conventions are kept: the input is ``(pixel - mean) /
256`` with dlib's per-channel means, and a residual sum of tensors of different sizes (the
downsampling blocks' 3 px output against their pooled 4 px input) pads the smaller with
zeros at the bottom, right and in the extra channels. A test checks the descriptors against
dlib's own, to 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN: Final = (122.782, 117.001, 104.298)
"""dlib's ``input_rgb_image`` channel means (the file stores the same, as dlib floats)."""

LEVELS: Final = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
"""(filters, residual blocks, first block downsamples) from the input up: dlib's alevel4..0."""

_NAMES: Final = (b"con_4", b"affine_", b"max_pool_2", b"avg_pool_2", b"fc_2")


class DlibFormatError(ValueError):
    """The file is not dlib's face-recognition ResNet as this module knows it."""


def _int(data: bytes, pos: int) -> tuple[int, int]:
    control = data[pos]
    size = control & 0x0F
    value = int.from_bytes(data[pos + 1 : pos + 1 + size], "little")
    return (-value if control & 0x80 else value), pos + 1 + size


def _tensor(data: bytes, pos: int) -> tuple[np.ndarray, int]:
    version, pos = _int(data, pos)
    dims = []
    for _ in range(4):
        value, pos = _int(data, pos)
        dims.append(value)
    if version != 2:
        raise DlibFormatError(f"tensor version {version} at byte {pos}")
    count = int(np.prod(dims))
    values = np.frombuffer(data, dtype="<f4", count=count, offset=pos).astype(np.float32)
    return values, pos + 4 * count


def read_layers(path: str | Path) -> list[tuple[str, dict[str, object]]]:
    """The convolution, affine, pooling and fc layers of a dlib network file, input first."""
    data = Path(path).read_bytes()
    keys = {name: bytes([1, len(name)]) + name for name in _NAMES}
    layers: list[tuple[str, dict[str, object]]] = []
    pos = 0
    while True:
        found = [(data.find(key, pos), name) for name, key in keys.items()]
        found = [(at, name) for at, name in found if at >= 0]
        if not found:
            break
        at, name = min(found)
        pos = at + 2 + len(name)
        fields: dict[str, object] = {}
        if name == b"con_4":
            fields["params"], pos = _tensor(data, pos)
            for key in ("filters", "nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x"):
                fields[key], pos = _int(data, pos)
        elif name == b"affine_":
            fields["params"], pos = _tensor(data, pos)
        elif name in (b"max_pool_2", b"avg_pool_2"):
            for key in ("nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x"):
                fields[key], pos = _int(data, pos)
        else:  # fc_2: outputs, inputs, then the weights [inputs, outputs]
            fields["outputs"], pos = _int(data, pos)
            fields["inputs"], pos = _int(data, pos)
            fields["params"], pos = _tensor(data, pos)
        layers.append((name.decode(), fields))
    return layers


def _padded_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum at the larger size, the smaller zero-padded at the end."""
    if a.shape == b.shape:
        return a + b
    k, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, k - t.shape[1]))

    return grow(a) + grow(b)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet: ``uint8 [N, 150, 150, 3]`` RGB chips to ``[N, 128]``.

    Each affine layer is folded into the convolution before it (``gamma * (w x + b) +
    beta``), which is what dlib computes, in one step.
    """

    mean: torch.Tensor

    def __init__(self, layers: list[tuple[str, dict[str, object]]]) -> None:
        super().__init__()
        convs = [f for n, f in layers if n == "con_4"]
        affines = [f for n, f in layers if n == "affine_"]
        fcs = [f for n, f in layers if n == "fc_2"]
        blocks = sum(count for _, count, _ in LEVELS)
        if len(convs) != 1 + 2 * blocks or len(affines) != len(convs) or len(fcs) != 1:
            raise DlibFormatError(
                f"expected {1 + 2 * blocks} convolutions with affine layers and one fc layer, found "
                f"{len(convs)}, {len(affines)} and {len(fcs)}: not dlib_face_recognition_resnet_model_v1"
            )
        self.convs = nn.ModuleList()
        expected = [(3, 32, 7, 2, 0)]
        channels = 32
        for filters, count, down in LEVELS:
            for i in range(count):
                stride = 2 if down and i == 0 else 1
                expected += [(channels, filters, 3, stride, 0 if stride == 2 else 1), (filters, filters, 3, 1, 1)]
                channels = filters
        for (cin, cout, kernel, stride, pad), conv, affine in zip(expected, convs, affines, strict=True):
            got = (conv["filters"], conv["nr"], conv["nc"], conv["stride_y"], conv["stride_x"], conv["pad_y"])
            if got != (cout, kernel, kernel, stride, stride, pad):
                raise DlibFormatError(f"a convolution is {got}, expected {(cout, kernel, kernel, stride, stride, pad)}")
            params = np.asarray(conv["params"])
            weight = torch.from_numpy(params[: cout * cin * kernel * kernel].reshape(cout, cin, kernel, kernel).copy())
            bias = torch.from_numpy(params[cout * cin * kernel * kernel :].copy())
            scale = np.asarray(affine["params"])
            gamma, beta = torch.from_numpy(scale[:cout].copy()), torch.from_numpy(scale[cout:].copy())
            layer = nn.Conv2d(cin, cout, kernel, stride, pad)
            layer.weight = nn.Parameter(weight * gamma.view(-1, 1, 1, 1), requires_grad=False)
            layer.bias = nn.Parameter(bias * gamma + beta, requires_grad=False)
            self.convs.append(layer)
        fc = fcs[0]
        weights = np.asarray(fc["params"]).reshape(int(fc["inputs"]), int(fc["outputs"]))  # type: ignore[call-overload]
        self.fc = nn.Linear(weights.shape[0], weights.shape[1], bias=False)
        self.fc.weight = nn.Parameter(torch.from_numpy(weights.T.copy()), requires_grad=False)
        self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(self.convs[0](x)), 3, 2)
        index = 1
        for _, count, down in LEVELS:
            for i in range(count):
                y = self.convs[index + 1](F.relu(self.convs[index](x)))
                index += 2
                skip = F.avg_pool2d(x, 2, 2) if down and i == 0 else x
                x = F.relu(_padded_sum(y, skip))
        return self.fc(x.mean(dim=(2, 3)))


_CACHE: dict[str, DlibResNet] = {}


def load(path: str | Path) -> DlibResNet:
    """The network of a dlib ``.dat`` file (read once per process and path)."""
    key = str(Path(path).resolve())
    if key not in _CACHE:
        _CACHE[key] = DlibResNet(read_layers(path))
    return _CACHE[key]
