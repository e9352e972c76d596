"""Which torch device a command runs its model on (``device: auto | cuda | cpu`` in params.yaml)."""

from __future__ import annotations

import torch

from faces_core.inference.settings import DEVICES, EvaluateInputError


def resolve_device(preference: str, section: str = "evaluate") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU.

    Raises:
        EvaluateInputError: ``cuda`` is asked for but no GPU is visible, or the value is unknown.
    """
    if preference not in DEVICES:
        raise EvaluateInputError(f"{section}.device must be one of {', '.join(DEVICES)}; got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EvaluateInputError(f"{section}.device is cuda but no CUDA GPU is visible: use auto or cpu")
    return torch.device("cuda", 0)
