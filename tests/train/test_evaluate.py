"""Evaluate: eval.json structure and counts, confusion PNG/CSV, splits, too few labels, the flow.

Predictions are recomputed here with one plain forward pass over the same crops, and every
count is taken from the Parquet with pyarrow, so the report is checked against independent
numbers rather than against itself.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from faces_cli.main import main
from faces_core.inference.model import load_model
from faces_core.inference.settings import EvaluateInputError, EvaluatePaths, EvaluateSettings, PredictSettings
from faces_core.storage import read_faces
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.dataset import FaceDataset, load_face_table
from faces_core.train.evaluate import evaluate, format_eval

HEADS = ("gender", "expression", "age_stage", "pose", "illumination", "occlusion", "makeup")
"""Heads of the tiny model: the IMFDB attributes with labels in two or more classes."""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _paths(model: Path, data: Path, out: Path) -> EvaluatePaths:
    return EvaluatePaths(model, data, out / "metrics" / "eval.json", out / "plots" / "confusion")


def _settings(split: str, min_labels: int = 1) -> EvaluateSettings:
    return EvaluateSettings(split=split, min_labels=min_labels, batch_size=256, workers=0, device="cpu")


def _expected_predictions(model_dir: Path, data: Path, split: str | None) -> tuple[Any, dict[str, np.ndarray]]:
    """Faces of the split and each head's argmax from one forward pass over all of them."""
    model, meta = load_model(model_dir, "cpu")
    table = load_face_table(data, split=split)
    dataset = FaceDataset(table, meta.input_size)
    with torch.inference_mode():
        logits = model(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    return table, {head: value.argmax(dim=1).numpy() for head, value in logits.items()}


def _parquet_labels(data: Path, split: str | None) -> pa.Table:
    return read_faces(data, split=split).to_table(columns=["source", "bucket", *ATTRIBUTES])


def _read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text().splitlines()))


@pytest.fixture(scope="module")
def val_report(
    tiny_model: Path, ingested_sample: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], EvaluatePaths]:
    paths = _paths(tiny_model, ingested_sample, tmp_path_factory.mktemp("eval-val"))
    return evaluate(paths, _settings("val")), paths


def test_eval_json_has_the_exact_structure(
    val_report: tuple[dict[str, Any], EvaluatePaths], ingested_sample: Path
) -> None:
    result, paths = val_report
    assert json.loads(paths.details_path.read_text()) == result
    assert paths.details_path == paths.metrics_file.with_name("eval_details.json")
    assert set(result) == {"model", "data", "device", "min_labels", "score", "attributes"}
    assert set(result["model"]) == {"dir", "backbone", "input_size", "version", "data_version"}
    assert result["model"]["backbone"] == "mobilenet_v3_large" and result["model"]["input_size"] == 32
    faces = read_faces(ingested_sample, split="val").count_rows()
    assert result["data"] == {
        "dir": str(ingested_sample),
        "split": "val",
        "faces": faces,
        "data_version": result["model"]["data_version"],
        "same_data_as_training": True,
    }
    assert result["device"] == "cpu" and result["min_labels"] == 1
    assert list(result["attributes"]) == list(ATTRIBUTES)
    statuses = {a: r["status"] for a, r in result["attributes"].items()}
    assert statuses == {a: "ok" if a in HEADS else "no_head" for a in ATTRIBUTES}
    for attribute in HEADS:
        report = result["attributes"][attribute]
        assert set(report) == {
            "status", "labelled", "accuracy", "macro_f1", "floor_accuracy", "floor_macro_f1", "ece",
            "classes", "by_bucket", "by_source", "confusion", "published",
        }  # fmt: skip
        assert list(report["classes"]) == list(ATTRIBUTES[attribute])
        for stats in report["classes"].values():
            assert set(stats) == {"precision", "recall", "f1", "support"}
        assert report["confusion"] == {
            "png": str(paths.plots_dir / f"{attribute}.png"),
            "csv": str(paths.plots_dir / f"{attribute}.csv"),
        }
    assert result["score"] == pytest.approx(np.mean([result["attributes"][a]["macro_f1"] for a in HEADS]), abs=1e-5)


def test_dvc_metrics_file_holds_flat_headline_figures(val_report: tuple[dict[str, Any], EvaluatePaths]) -> None:
    result, paths = val_report
    headline = json.loads(paths.metrics_file.read_text())
    assert set(headline) == {"score", "faces", *HEADS}  # one flat entry per scored head, no nesting below it
    for attribute in HEADS:
        report = result["attributes"][attribute]
        assert headline[attribute] == {
            "acc": report["accuracy"],
            "f1": report["macro_f1"],
            "floor_f1": report["floor_macro_f1"],
            "ece": report["ece"],
        }
        supports = [c["support"] for c in report["classes"].values()]
        assert report["floor_accuracy"] == pytest.approx(max(supports) / sum(supports), abs=1e-6)
        assert 0.0 <= report["ece"] <= 1.0


def test_majority_floor_and_calibration_error_by_hand() -> None:
    from faces_core.train.metrics import expected_calibration_error, majority_floor

    cm = np.array([[8, 0], [2, 0]])  # 8 male, 2 female, all called male: the collapsed head
    floor_acc, floor_f1 = majority_floor(cm)
    assert floor_acc == pytest.approx(0.8)
    assert floor_f1 == pytest.approx((2 * 0.8 / 1.8) / 2)  # F1 of "male" (p=0.8, r=1), 0 for "female"
    # Always 0.9 sure and right 9 times in 10: calibrated; right 5 times in 10: ECE 0.4.
    right = np.array([1] * 9 + [0])
    assert expected_calibration_error(np.full(10, 0.9), right) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(10, 0.9), np.array([1] * 5 + [0] * 5)) == pytest.approx(0.4)


def test_supports_and_metrics_match_an_independent_count(
    val_report: tuple[dict[str, Any], EvaluatePaths], tiny_model: Path, ingested_sample: Path
) -> None:
    result, _ = val_report
    labels = _parquet_labels(ingested_sample, "val")
    table, predicted = _expected_predictions(tiny_model, ingested_sample, "val")
    for attribute in ATTRIBUTES:
        column = labels.column(attribute).to_pylist()
        report = result["attributes"][attribute]
        assert report["labelled"] == sum(v is not None for v in column), attribute
        if report["status"] != "ok":
            continue
        counts = Counter(v for v in column if v is not None)
        assert {c: s["support"] for c, s in report["classes"].items()} == {c: counts[c] for c in ATTRIBUTES[attribute]}
        # Independent accuracy and per-class precision/recall from the plain forward pass.
        truth = table.targets[:, table.attributes.index(attribute)]
        keep = truth >= 0
        right = truth[keep] == predicted[attribute][keep]
        assert report["accuracy"] == pytest.approx(right.mean(), abs=1e-6)
        for index, name in enumerate(ATTRIBUTES[attribute]):
            predicted_as = keep & (predicted[attribute] == index)
            hits = int((truth[predicted_as] == index).sum())
            expected = hits / predicted_as.sum() if predicted_as.sum() else 0.0
            assert report["classes"][name]["precision"] == pytest.approx(expected, abs=1e-6), (attribute, name)
        buckets = Counter(b for b, v in zip(labels.column("bucket").to_pylist(), column, strict=True) if v is not None)
        assert {b: e["labelled"] for b, e in report["by_bucket"].items()} == dict(buckets)
        assert {s: e["labelled"] for s, e in report["by_source"].items()} == {"imfdb": report["labelled"]}


def test_confusion_files_are_real_pngs_and_csvs_that_sum_to_the_labelled_count(
    val_report: tuple[dict[str, Any], EvaluatePaths], tiny_model: Path, ingested_sample: Path
) -> None:
    result, paths = val_report
    table, predicted = _expected_predictions(tiny_model, ingested_sample, "val")
    assert sorted(p.name for p in paths.plots_dir.iterdir()) == sorted(
        f"{a}{suffix}" for a in HEADS for suffix in (".png", ".csv")
    )
    for attribute in HEADS:
        png = paths.plots_dir / f"{attribute}.png"
        assert png.read_bytes().startswith(PNG_MAGIC)
        with Image.open(png) as image:
            image.load()
            assert image.format == "PNG" and image.width > 100 and image.height > 100
        rows = _read_csv(paths.plots_dir / f"{attribute}.csv")
        classes = list(ATTRIBUTES[attribute])
        assert rows[0] == ["true\\predicted", *classes]
        assert [r[0] for r in rows[1:]] == classes
        cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
        assert cm.sum() == result["attributes"][attribute]["labelled"]
        truth = table.targets[:, table.attributes.index(attribute)]
        expected = np.zeros_like(cm)
        for t, p in zip(truth, predicted[attribute], strict=True):
            if t >= 0:
                expected[t, p] += 1
        assert cm.tolist() == expected.tolist()


def test_split_all_covers_every_face(tiny_model: Path, ingested_sample: Path, tmp_path: Path) -> None:
    result = evaluate(_paths(tiny_model, ingested_sample, tmp_path), _settings("all"))
    labels = _parquet_labels(ingested_sample, None)
    assert result["data"]["faces"] == labels.num_rows == len(load_face_table(ingested_sample))
    assert set(read_faces(ingested_sample).to_table(columns=["split"]).column("split").to_pylist()) == {"train", "val"}
    for attribute in ATTRIBUTES:
        labelled = labels.num_rows - labels.column(attribute).null_count
        assert result["attributes"][attribute]["labelled"] == labelled, attribute
    by_bucket = result["attributes"]["gender"]["by_bucket"]
    assert sum(e["labelled"] for e in by_bucket.values()) == result["attributes"]["gender"]["labelled"]
    assert list(by_bucket) == sorted(by_bucket, key=lambda b: int(b.split("-")[0]))


def _few_pose_labels(source: Path, out: Path, keep: int) -> Path:
    """A copy of ``source``'s faces with only ``keep`` pose labels left (a separately made dataset)."""
    table = read_faces(source).to_table()
    pose = table.column("pose").to_pylist()
    labelled = [i for i, v in enumerate(pose) if v is not None]
    kept = set(labelled[:keep])
    new_pose = pa.array([v if i in kept else None for i, v in enumerate(pose)], pa.string())
    table = table.set_column(table.schema.get_field_index("pose"), "pose", new_pose)
    table = table.set_column(
        table.schema.get_field_index("source"), "source", pc.cast(table.column("source"), pa.string())
    )
    table = table.set_column(
        table.schema.get_field_index("bucket"), "bucket", pc.cast(table.column("bucket"), pa.string())
    )
    pq.write_to_dataset(table, out / "faces", partition_cols=["source", "bucket"])
    return out


def test_an_attribute_with_few_labels_is_reported_not_hidden(
    tiny_model: Path, ingested_sample: Path, tmp_path: Path
) -> None:
    data = _few_pose_labels(ingested_sample, tmp_path / "few", keep=3)
    paths = _paths(tiny_model, data, tmp_path)
    first = evaluate(paths, _settings("all", min_labels=1))
    assert first["attributes"]["pose"]["status"] == "ok"
    assert (paths.plots_dir / "pose.png").is_file()

    result = evaluate(paths, _settings("all", min_labels=5))
    assert result["attributes"]["pose"] == {"status": "too_few_labels", "labelled": 3, "min_labels": 5}
    assert result["attributes"]["gender"]["status"] == "ok"
    assert result["attributes"]["age_range"] == {"status": "no_head", "labelled": 0}
    assert result["data"]["same_data_as_training"] is False
    # The previous run's pose matrix is gone: it would pass for a current result.
    assert not (paths.plots_dir / "pose.png").exists() and not (paths.plots_dir / "pose.csv").exists()
    assert (paths.plots_dir / "gender.png").is_file()
    text = format_eval(result, paths.metrics_file, paths.plots_dir)
    assert ["pose", "too_few_labels", "3", "-", "-", "-", "-", "-"] in [line.split() for line in text.splitlines()]


def test_unusable_inputs_say_what_to_do(tiny_model: Path, ingested_sample: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluateInputError, match=r"no faces in split 'test' .*train=\d+, val=\d+.*--split"):
        evaluate(_paths(tiny_model, ingested_sample, tmp_path), _settings("test"))
    with pytest.raises(EvaluateInputError, match=r"nomodel/model\.pt, .*model\.json not found: train a model first"):
        evaluate(_paths(tmp_path / "nomodel", ingested_sample, tmp_path), _settings("val"))
    with pytest.raises(EvaluateInputError, match=r"no faces dataset at .*faces ingest"):
        evaluate(_paths(tiny_model, tmp_path / "nodata", tmp_path), _settings("val"))
    with pytest.raises(EvaluateInputError, match=r"evaluate\.split must be one of train, val, test, all; got .dev."):
        _settings("dev")
    assert not (tmp_path / "metrics").exists()


def test_cli_reports_a_missing_model_without_running_the_flow(ingested_sample: Path, tmp_path: Path) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(ingested_sample), "--split", "val"])
    assert code == 2
    assert f"faces evaluate: {tmp_path / 'none' / 'model.pt'}" in stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_evaluate_flow_writes_outputs_and_its_artifact(
    tiny_model: Path, ingested_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    # Two DataLoader workers forked inside the flow run (they used to die at exit, see workers.py).
    params = tmp_path / "params.yaml"
    params.write_text(
        "evaluate: {split: val, min_labels: 1, batch_size: 8, workers: 2, device: cpu, "
        f"metrics_file: {tmp_path / 'eval.json'}, plots_dir: {tmp_path / 'confusion'}}}\n"
    )
    monkeypatch.setenv("FACES_PARAMS", str(params))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["evaluate", "--model", str(tiny_model), "--data", str(ingested_sample)])
    assert code == 0
    result = json.loads((tmp_path / "eval_details.json").read_text())
    assert result["data"]["split"] == "val"
    assert sorted(p.name for p in (tmp_path / "confusion").glob("*.png")) == sorted(f"{a}.png" for a in HEADS)
    lines = printed.getvalue().splitlines()
    gender = result["attributes"]["gender"]
    figures = [f"{gender[k]:.3f}" for k in ("accuracy", "floor_accuracy", "macro_f1", "floor_macro_f1", "ece")]
    assert ["gender", "ok", str(gender["labelled"]), *figures] in [line.split() for line in lines]
    assert f"metrics: {tmp_path / 'eval.json'}" in lines

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluate-metrics"])),
            sort=ArtifactSort.CREATED_DESC,
        )
    assert artifacts, "no evaluate-metrics artifact"
    markdown = str(artifacts[0].data)  # the newest: other tests of the session publish the same key
    assert f"| gender | ok | {gender['labelled']} | {' | '.join(figures)} |" in markdown
    assert "| age_range | no_head | 0 | - | - | - | - | - |" in markdown


def test_params_yaml_sections_load_and_match_the_code_defaults() -> None:
    from flows.params import load_params
    from flows.params.evaluate import evaluate_config, predict_config
    from tests.conftest import REPO

    params = load_params(REPO / "params.yaml")
    paths, settings = evaluate_config(params)
    # params.yaml is the bundled sample's profile: its test split is nearly empty, so it scores
    # every face; the code default is the real-data profile's (params-imfdb.yaml) test split.
    assert settings.split == "all"
    expected_paths = EvaluatePaths(details_file=Path("metrics/eval_details.json"))
    assert (paths, dataclasses.replace(settings, split="test")) == (expected_paths, EvaluateSettings())
    assert EvaluatePaths().details_path == expected_paths.details_path  # the default derives the same file
    model_dir, predict = predict_config(params)
    assert (model_dir, predict) == (Path("models"), PredictSettings())
    paths, settings = evaluate_config(params, data_dir="data/new", split="all", min_labels=None)
    assert paths.data_dir == Path("data/new") and settings.split == "all" and settings.min_labels == 20


def test_evaluate_params_fall_back_to_the_ingest_and_train_dirs_and_refuse_unknown_keys() -> None:
    from flows.params.evaluate import evaluate_config, predict_config

    paths, _ = evaluate_config({"ingest": {"out_dir": "out"}, "train": {"model_dir": "m"}})
    assert (paths.data_dir, paths.model_dir) == (Path("out"), Path("m"))
    assert predict_config({"train": {"model_dir": "m"}})[0] == Path("m")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epochs'\] in params section 'evaluate'"):
        evaluate_config({"evaluate": {"epochs": 3}})
    with pytest.raises(EvaluateInputError, match=r"predict\.device must be one of auto, cuda, cpu; got 'tpu'"):
        predict_config({"predict": {"device": "tpu"}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_on_cuda_counts_the_same_faces(tiny_model: Path, ingested_sample: Path, tmp_path: Path) -> None:
    cpu = evaluate(_paths(tiny_model, ingested_sample, tmp_path / "cpu"), _settings("all"))
    settings = EvaluateSettings(split="all", min_labels=1, batch_size=64, workers=2, device="cuda")
    gpu = evaluate(_paths(tiny_model, ingested_sample, tmp_path / "gpu"), settings)
    assert gpu["device"] == "cuda"
    for attribute, report in cpu["attributes"].items():
        assert gpu["attributes"][attribute]["labelled"] == report["labelled"]
        if report["status"] == "ok":
            supports = {c: s["support"] for c, s in report["classes"].items()}
            assert {c: s["support"] for c, s in gpu["attributes"][attribute]["classes"].items()} == supports


def test_out_elsewhere_writes_its_details_beside_it_not_over_the_dvc_stage_file(tmp_path: Path) -> None:
    """`faces evaluate --out X` once overwrote metrics/eval_details.json, the DVC stage's output."""
    from flows.params.evaluate import evaluate_config

    params = {"evaluate": {"metrics_file": "metrics/eval.json", "details_file": "metrics/eval_details.json"}}
    paths, _ = evaluate_config(params, metrics_file=str(tmp_path / "test.json"))
    assert paths.details_path == tmp_path / "test_details.json"
    assert evaluate_config(params)[0].details_path == Path("metrics/eval_details.json")
    chosen = evaluate_config(params, metrics_file="a.json", details_file="b.json")[0]
    assert chosen.details_path == Path("b.json")
