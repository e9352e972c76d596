"""Taxonomy: every raw string of both sources maps into one canonical vocabulary, and an
unknown string is reported as None, never guessed."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from faces_core.taxonomy import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    IMFDB_COLUMNS,
    IMFDB_LABELS,
    IMFDB_TYPOS,
    TCS_AMBIGUOUS,
    TCS_LABELS,
    empty_labels,
    is_valid,
    map_imfdb_token,
    map_tcs_label,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_TCS = SHARED / "reference" / "tcs" / "Face_Recognition.json"

# Every label string of the published TCS export, with what it must map to.
TCS_SEEN: dict[str, tuple[str, str]] = {
    "Not_Face": ("is_face", "false"),
    "Emotion_Neutral": ("expression", "neutral"),
    "Emotion_Happy": ("expression", "happiness"),
    "Emotion_Sad": ("expression", "sadness"),
    "Emotion_Angry": ("expression", "anger"),
    "G_Male": ("gender", "male"),
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
}


def _real_tcs_labels() -> set[str]:
    if not REAL_TCS.exists():
        pytest.skip(f"{REAL_TCS} not found: this test needs the read-only ../shared data beside the checkout")
    labels: set[str] = set()
    for line in REAL_TCS.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        for face in json.loads(line).get("annotation") or []:
            if isinstance(face, dict):
                labels.update(s for s in face.get("label") or [] if isinstance(s, str))
    return labels


# --- TCS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), sorted(TCS_SEEN.items()))
def test_tcs_label_maps(raw: str, expected: tuple[str, str]) -> None:
    assert map_tcs_label(raw) == expected


@pytest.mark.shared
def test_every_label_of_the_real_tcs_export_is_known() -> None:
    labels = _real_tcs_labels()
    assert labels, "the reference export holds no label at all"
    unknown = sorted(s for s in labels if map_tcs_label(s) is None and s not in TCS_AMBIGUOUS)
    assert unknown == []
    for raw in labels - TCS_AMBIGUOUS:
        attribute, value = map_tcs_label(raw)  # type: ignore[misc]
        assert value in ATTRIBUTES[attribute], raw


@pytest.mark.shared
def test_hard_coded_list_covers_the_real_tcs_export() -> None:
    # Keeps TCS_SEEN honest, so the core test above needs no ../shared.
    assert _real_tcs_labels() - TCS_AMBIGUOUS == set(TCS_SEEN)


def test_gender_with_space_after_prefix() -> None:
    assert map_tcs_label("G_ Female") == ("gender", "female")
    assert map_tcs_label("G_ Male") == ("gender", "male")
    assert map_tcs_label("G_Female") == ("gender", "female")


def test_tcs_label_padding_is_ignored() -> None:
    assert map_tcs_label("  G_ Female\t") == ("gender", "female")
    assert map_tcs_label("Emotion_Happy\n") == ("expression", "happiness")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "others",  # known but ambiguous: reported by the parser, not mapped
        "G_Mal",
        "G_",
        "Emotion_Happiness",
        "Emotion_Contempt",
        "Age_50_60",
        "E_Martian",
        "Male",
        "female",
        "MALE",  # an IMFDB token is not a TCS label
        "MIDDDLE",
    ],
)
def test_unknown_tcs_label_is_none(raw: str) -> None:
    assert map_tcs_label(raw) is None


def test_others_is_ambiguous_not_mapped() -> None:
    assert "others" in TCS_AMBIGUOUS
    assert "others" not in TCS_LABELS


# --- IMFDB --------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", IMFDB_COLUMNS)
def test_imfdb_canonical_tokens_map_to_their_own_attribute(attribute: str) -> None:
    # A token shared by two attributes would map to only one of them and fail here.
    for value in ATTRIBUTES[attribute]:
        assert map_imfdb_token(value.upper()) == (attribute, value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MIDDDLE", ("age_stage", "middle")),
        ("midddle", ("age_stage", "middle")),
        ("  Midddle\t", ("age_stage", "middle")),
        ("MIDLE", ("age_stage", "middle")),
        ("PARTIA", ("makeup", "partial")),
        ("partia ", ("makeup", "partial")),
        ("PARTIALs", ("makeup", "partial")),
        ("\tpartials\n", ("makeup", "partial")),
        ("PARTIALS", ("makeup", "partial")),
        ("PARTAIL", ("makeup", "partial")),
        ("happy", ("expression", "happiness")),
        ("Ornament", ("occlusion", "ornaments")),
    ],
)
def test_imfdb_typos_map(raw: str, expected: tuple[str, str]) -> None:
    assert map_imfdb_token(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MALE", ("gender", "male")),
        ("male", ("gender", "male")),
        (" Female ", ("gender", "female")),
        ("middle", ("age_stage", "middle")),
        ("\tNONE\r\n", ("occlusion", "none")),
        ("Frontal", ("pose", "frontal")),
        ("bAd", ("illumination", "bad")),
        ("over", ("makeup", "over")),
    ],
)
def test_imfdb_tokens_any_case_and_padding(raw: str, expected: tuple[str, str]) -> None:
    assert map_imfdb_token(raw) == expected


@pytest.mark.parametrize("raw", ["", "  ", "-", "MIDDLEAGED", "PART", "G_Male", "Emotion_Happy", "NA", "UNKNOWN"])
def test_unknown_imfdb_token_is_none(raw: str) -> None:
    assert map_imfdb_token(raw) is None


def test_imfdb_vocabularies_are_disjoint_across_attributes() -> None:
    # The IMFDB parser places labels of shifted rows by token, so no token may name two attributes.
    tokens = {attr: {raw for raw, (a, _) in IMFDB_LABELS.items() if a == attr} for attr in IMFDB_COLUMNS}
    for a, b in combinations(IMFDB_COLUMNS, 2):
        assert not tokens[a] & tokens[b], (a, b)
    values = {attr: set(ATTRIBUTES[attr]) for attr in IMFDB_COLUMNS}
    for a, b in combinations(IMFDB_COLUMNS, 2):
        assert not values[a] & values[b], (a, b)


def test_imfdb_typos_do_not_shadow_canonical_tokens() -> None:
    canonical = {value.upper() for attr in IMFDB_COLUMNS for value in ATTRIBUTES[attr]}
    assert not set(IMFDB_TYPOS) & canonical


def test_imfdb_columns_are_seven_known_attributes() -> None:
    assert len(IMFDB_COLUMNS) == 7
    assert len(set(IMFDB_COLUMNS)) == 7
    assert set(IMFDB_COLUMNS) <= set(ATTRIBUTE_NAMES)
    assert {a for a, _ in IMFDB_LABELS.values()} == set(IMFDB_COLUMNS)


def test_imfdb_keys_are_upper_case_and_stripped() -> None:
    # map_imfdb_token upper-cases and strips its input, so any other key is unreachable.
    assert all(raw == raw.strip().upper() for raw in IMFDB_LABELS)


# --- vocabulary ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "name"),
    [(TCS_LABELS, "TCS_LABELS"), (IMFDB_LABELS, "IMFDB_LABELS"), (IMFDB_TYPOS, "IMFDB_TYPOS")],
)
def test_every_mapped_value_is_in_attributes(table: dict[str, tuple[str, str]], name: str) -> None:
    bad = {raw: pair for raw, pair in table.items() if pair[0] not in ATTRIBUTES or pair[1] not in ATTRIBUTES[pair[0]]}
    assert bad == {}, name


def test_vocabularies_are_lower_case_without_duplicates() -> None:
    assert tuple(ATTRIBUTES) == ATTRIBUTE_NAMES
    for attribute, values in ATTRIBUTES.items():
        assert values, attribute
        assert len(set(values)) == len(values), attribute
        assert all(v == v.lower() == v.strip() for v in values), attribute


def test_attributes_are_read_only() -> None:
    with pytest.raises(TypeError):
        ATTRIBUTES["gender"] = ("x",)  # type: ignore[index]
    with pytest.raises(TypeError):
        TCS_LABELS["G_Male"] = ("gender", "female")  # type: ignore[index]


def test_is_valid() -> None:
    assert is_valid("gender", "male")
    assert is_valid("age_range", "20_30")
    assert is_valid("is_face", "false")
    assert is_valid("gender", None)
    assert is_valid("no_such_attribute", None)
    assert not is_valid("gender", "MALE")
    assert not is_valid("gender", "unknown")
    assert not is_valid("gender", "young")  # a value of another attribute
    assert not is_valid("no_such_attribute", "male")
    assert not is_valid("gender", "")


def test_empty_labels_covers_all_attributes() -> None:
    labels = empty_labels()
    assert list(labels) == list(ATTRIBUTE_NAMES)
    assert set(labels) == set(ATTRIBUTES)
    assert all(v is None for v in labels.values())


def test_empty_labels_is_fresh_each_call() -> None:
    first = empty_labels()
    first["gender"] = "male"
    assert empty_labels()["gender"] is None
