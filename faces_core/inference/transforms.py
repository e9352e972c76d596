"""How a face crop becomes the model's input tensor at inference: the ImageNet normalisation
the backbones were trained with, and the deterministic resize. Training's random transform
(:mod:`faces_core.train.dataset`) ends in the same normalisation.
"""

from __future__ import annotations

from typing import Final

import torch
from torchvision.transforms import v2

IGNORE_INDEX: Final = -100
"""Target of a face that has no label for an attribute (``cross_entropy``'s ignore_index)."""

IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)


def eval_transform(size: int) -> v2.Compose:
    """Resize a decoded crop to ``size`` x ``size`` and normalise (no randomness)."""
    return v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
