"""The annotate and annotate-inbox flows under a real Prefect server, and their deployments."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from faces_core.annotate import store
from faces_core.sample.faces import AnnotateSample, face_box, faces_image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Path:
    """A params.yaml with small, CPU settings, the tiny model and an inbox under tmp_path."""
    path = tmp_path / "params.yaml"
    path.write_text(
        json.dumps(
            {
                "annotate": {
                    "out": str(tmp_path / "out"),
                    "adhoc_out": str(tmp_path / "out"),
                    "model_dir": str(tiny_model),
                    "shard_size": 4,
                    "lock_wait_s": 5,
                    "detect": {"max_side": 640, "device": "cpu"},
                    "inbox": {
                        "folders": [str(tmp_path / "inbox")],
                        "out": str(tmp_path / "out"),
                        "interval_s": 60,
                        "settle_s": 1.0,
                    },
                }
            }
        )
    )
    monkeypatch.setenv("FACES_PARAMS", str(path))
    return path


def test_annotate_flow_predicts_attributes_with_the_trained_model(
    params: Path, sample: AnnotateSample, tiny_model: Path, tmp_path: Path
) -> None:
    from flows.annotate import annotate

    modes = tmp_path / "modes"
    shutil.copytree(sample.root / "modes", modes)
    summary = annotate(inputs=[str(modes)], export="coco")
    out = tmp_path / "out"
    assert (summary["files"], summary["faces"], summary["errors"], summary["skipped"]) == (4, 4, 0, 0)
    version = json.loads((tiny_model / "model.json").read_text())["version"]
    assert summary["model_version"] == version
    rows = store.read_annotations(out).to_pylist()
    heads = json.loads((tiny_model / "model.json").read_text())["attributes"]
    for row in rows:
        assert row["model_version"] == version and row["run_id"] == summary["run_id"]
        for head, classes in heads.items():
            assert row[head] in classes and 0.0 < row[f"{head}_probability"] <= 1.0
    assert len(json.loads(Path(summary["coco"]).read_text())["annotations"]) == 4
    assert annotate(inputs=[str(modes)])["skipped"] == 4


def test_the_dvc_stage_run_writes_the_same_bytes_for_the_same_inputs(
    params: Path, sample: AnnotateSample, tmp_path: Path
) -> None:
    """`--dvc-stage` (dvc.yaml's annotate command): ids and rows from the inputs, not the clock,
    so an identical `dvc repro` leaves dvc.lock and git status unchanged."""
    from flows.annotate import annotate

    modes = tmp_path / "modes"
    shutil.copytree(sample.root / "modes", modes)
    first = annotate(inputs=[str(modes)], out=str(tmp_path / "a"), dvc_stage=True, export="coco")
    time.sleep(1.1)  # a clock-based id or timestamp would differ now
    second = annotate(inputs=[str(modes)], out=str(tmp_path / "b"), dvc_stage=True, export="coco")
    assert first["run_id"] == second["run_id"] and first["run_id"].startswith("repro-")
    parts_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    parts_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    assert parts_a == parts_b and parts_a
    for part in parts_a:
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes(), part
    assert (tmp_path / "a/coco.json").read_bytes() == (tmp_path / "b/coco.json").read_bytes()
    rows = store.read_annotations(tmp_path / "a").to_pylist()
    assert rows and all(r["annotated_at"] is None for r in rows)
    # A second reproducible run into the same folder never takes an existing part's name.
    third = annotate(inputs=[str(modes)], out=str(tmp_path / "a"), dvc_stage=True)
    assert third["run_id"] != first["run_id"] and third["skipped"] == 4


def test_annotate_refuses_to_write_into_a_dvc_stage_output(
    params: Path, sample: AnnotateSample, tmp_path: Path
) -> None:
    from flows.annotate import DvcOutputError, annotate

    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages:\n  annotate:\n    cmd: x\n    outs:\n      - data/annotations\n")
    with pytest.raises(DvcOutputError, match=r"stage annotate.*dvc add"):
        annotate(inputs=[str(sample.root / "modes")], out=str(repo / "data/annotations"))
    assert not (repo / "data/annotations").exists()  # refused before anything was written


def test_inbox_takes_settled_files_and_leaves_a_growing_one(params: Path, tmp_path: Path) -> None:
    from flows.annotate import annotate_inbox

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    faces_image(320, 240, [face_box(160, 120, 96)], random.Random(1)).save(inbox / "dropped.png")
    growing = inbox / "copying.jpg"
    stop = threading.Event()

    def grow() -> None:
        with growing.open("ab") as fh:
            while not stop.is_set():
                fh.write(b"\xff" * 512)
                fh.flush()
                time.sleep(0.1)

    writer = threading.Thread(target=grow, daemon=True)
    writer.start()
    try:
        first = annotate_inbox()
    finally:
        stop.set()
        writer.join()
    assert (first["files"], first["faces"], first["arriving"]) == (1, 1, 1)
    assert [Path(f).name for f in store.read_files(tmp_path / "out").column("file").to_pylist()] == ["dropped.png"]
    # The copy finished: the next run takes it (a real image now) and skips the first file.
    faces_image(240, 240, [face_box(120, 120, 96)], random.Random(2)).save(growing, format="JPEG")
    second = annotate_inbox()
    assert (second["files"], second["skipped"], second["faces"], second["arriving"]) == (1, 1, 1, 0)


def test_serve_builds_annotate_and_a_scheduled_inbox_deployment(params: Path) -> None:
    from flows.serve import build_deployments

    deployments = {d.name: d for d in build_deployments()}
    assert {"ingest", "train", "evaluate", "annotate", "annotate-inbox"} <= set(deployments)
    (schedule,) = deployments["annotate-inbox"].schedules
    assert schedule.schedule.interval == timedelta(seconds=60)
    assert deployments["annotate"].schedules == []
