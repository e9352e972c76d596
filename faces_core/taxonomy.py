"""One canonical, lower-case vocabulary per face attribute, and the tables that map each
source's raw strings into it.

Every source speaks its own dialect (TCS writes ``G_ Female`` with a space, IMFDB writes
``MIDDDLE``). Mapping happens here and only here, so the rest of the pipeline sees one
vocabulary. A raw string missing from the tables is *reported* by the caller as
``unknown_label``; it is never guessed.
"""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Final

ATTRIBUTES: Final = MappingProxyType(
    {
        "gender": ("male", "female"),
        "expression": (
            "neutral",
            "happiness",
            "sadness",
            "anger",
            "surprise",
            "fear",
            "disgust",
        ),
        "age_stage": ("child", "young", "middle", "old"),
        "age_range": ("below_20", "20_30", "30_40", "40_50", "above_50"),
        "ethnicity": ("white", "indian", "black", "asian", "hispanic", "arab"),
        "pose": ("frontal", "left", "right", "up", "down"),
        "illumination": ("bad", "medium", "high"),
        "occlusion": ("none", "glasses", "beard", "hair", "hand", "ornaments", "others"),
        "makeup": ("partial", "over"),
        "is_face": ("true", "false"),
    }
)
"""attribute -> allowed values, in a fixed order (the order is the class index in models)."""

ATTRIBUTE_NAMES: Final = tuple(ATTRIBUTES)

# --- TCS HumAIn ---------------------------------------------------------------------------

TCS_LABELS: Final = MappingProxyType(
    {
        "Emotion_Neutral": ("expression", "neutral"),
        "Emotion_Happy": ("expression", "happiness"),
        "Emotion_Sad": ("expression", "sadness"),
        "Emotion_Angry": ("expression", "anger"),
        "Emotion_Surprise": ("expression", "surprise"),
        "Emotion_Surprised": ("expression", "surprise"),
        "Emotion_Fear": ("expression", "fear"),
        "Emotion_Disgust": ("expression", "disgust"),
        "G_Male": ("gender", "male"),
        "G_ Male": ("gender", "male"),
        "G_Female": ("gender", "female"),
        "G_ Female": ("gender", "female"),
        "Age_below20": ("age_range", "below_20"),
        "Age_20_30": ("age_range", "20_30"),
        "Age_30_40": ("age_range", "30_40"),
        "Age_40_50": ("age_range", "40_50"),
        "Age_above_50": ("age_range", "above_50"),
        "E_White": ("ethnicity", "white"),
        "E_Indian": ("ethnicity", "indian"),
        "E_Black": ("ethnicity", "black"),
        "E_Asian": ("ethnicity", "asian"),
        "E_Hispanic": ("ethnicity", "hispanic"),
        "E_Arab": ("ethnicity", "arab"),
        "Not_Face": ("is_face", "false"),
    }
)
"""TCS raw label -> (attribute, canonical value)."""

TCS_AMBIGUOUS: Final = frozenset({"others"})
"""TCS strings that are known but name no attribute (``others`` is written in place of a
gender or ethnicity the annotator could not pick). Reported as ``ambiguous_label``."""

# --- IMFDB --------------------------------------------------------------------------------

_IMFDB_CANONICAL: Final = {
    "gender": {"MALE": "male", "FEMALE": "female"},
    "expression": {
        "NEUTRAL": "neutral",
        "HAPPINESS": "happiness",
        "SADNESS": "sadness",
        "ANGER": "anger",
        "SURPRISE": "surprise",
        "FEAR": "fear",
        "DISGUST": "disgust",
    },
    "occlusion": {
        "NONE": "none",
        "GLASSES": "glasses",
        "BEARD": "beard",
        "HAIR": "hair",
        "HAND": "hand",
        "ORNAMENTS": "ornaments",
        "OTHERS": "others",
    },
    "illumination": {"BAD": "bad", "MEDIUM": "medium", "HIGH": "high"},
    "age_stage": {"CHILD": "child", "YOUNG": "young", "MIDDLE": "middle", "OLD": "old"},
    "pose": {"FRONTAL": "frontal", "LEFT": "left", "RIGHT": "right", "UP": "up", "DOWN": "down"},
    "makeup": {"PARTIAL": "partial", "OVER": "over"},
}

IMFDB_TYPOS: Final = MappingProxyType(
    {
        "MIDDDLE": ("age_stage", "middle"),
        "MIDLE": ("age_stage", "middle"),
        "PARTIA": ("makeup", "partial"),
        "PARTIALS": ("makeup", "partial"),
        "PARTAIL": ("makeup", "partial"),
        "HAPPY": ("expression", "happiness"),
        "SAD": ("expression", "sadness"),
        "ANGRY": ("expression", "anger"),
        "SURPRISED": ("expression", "surprise"),
        "ORNAMENT": ("occlusion", "ornaments"),
        "OTHER": ("occlusion", "others"),
    }
)
"""Misspellings seen in the published IMFDB files (matched after upper-casing)."""

IMFDB_COLUMNS: Final = (
    "gender",
    "expression",
    "occlusion",
    "illumination",
    "age_stage",
    "pose",
    "makeup",
)
"""The order of the seven label columns in a well-formed IMFDB row."""

IMFDB_LABELS: Final = MappingProxyType(
    {
        **{raw: (attr, value) for attr, table in _IMFDB_CANONICAL.items() for raw, value in table.items()},
        **IMFDB_TYPOS,
    }
)
"""IMFDB raw token (upper-case) -> (attribute, canonical value). The seven vocabularies are
disjoint, which is what lets the parser place labels of rows whose columns shifted."""


def map_tcs_label(raw: str) -> tuple[str, str] | None:
    """Return (attribute, value) for a TCS label, or None when the string is unknown."""
    return TCS_LABELS.get(raw.strip()) or TCS_LABELS.get(raw)


@functools.lru_cache(maxsize=4096)
def map_imfdb_token(raw: str) -> tuple[str, str] | None:
    """Return (attribute, value) for an IMFDB label token (any case, any padding), or None.

    Cached: a parse asks about the same few dozen tokens ~250,000 times on the 50-actor set.
    """
    return IMFDB_LABELS.get(raw.strip().upper())


def is_valid(attribute: str, value: str | None) -> bool:
    """True when ``value`` is None (no label) or a member of the attribute's vocabulary."""
    return value is None or value in ATTRIBUTES.get(attribute, ())


def empty_labels() -> dict[str, str | None]:
    """A fresh label dict with every attribute unset."""
    return dict.fromkeys(ATTRIBUTE_NAMES)
