"""Deterministic train/val/test splits by group key.

IMFDB is split by actor and TCS by image, so no person (or no photo) leaks across splits.
A key's split depends only on the key, the seed and the fractions: adding new actors never
moves old ones, and a re-run gives the same assignment on any machine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class SplitFractions:
    """Fractions of groups per split; they must sum to 1."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        values = (self.train, self.val, self.test)
        if not all(math.isfinite(v) and v >= 0 for v in values) or not abs(sum(values) - 1.0) <= 1e-6:
            raise ValueError(
                f"split fractions must be >= 0 and sum to 1, got train={self.train} "
                f"val={self.val} test={self.test}; fix partition.split in params.yaml"
            )


def _unit_interval(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str, fractions: SplitFractions, seed: int = 0) -> str:
    """Return ``train``, ``val`` or ``test`` for a group key (actor name, image URL)."""
    u = _unit_interval(key, seed)
    if u < fractions.train:
        return "train"
    if u < fractions.train + fractions.val:
        return "val"
    return "test"
