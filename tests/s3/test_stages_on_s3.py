"""Every location of ingest, train and evaluate as an ``s3://`` URL on a real S3 API (moto's
server): the same faces and crop bytes as a local run, nothing read that no manifest commits,
and the planted secret written nowhere."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from faces_cli.main import main
from faces_core import objstore
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.sample.tcs import write_tcs_sample
from faces_core.storage import read_faces
from tests.s3.conftest import S3Env, files_containing
from tests.train.conftest import ingested_sample, tiny_model

__all__ = ["ingested_sample", "tiny_model"]  # the train tests' fixtures, used here too

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

TINY = (
    "download: {timeout_s: 2.0, retries: 1, backoff_s: 0.05, backoff_max_s: 0.2}\n"
    "train: {recipe: cnn, backbone: mobilenet_v3_large, weights: none, input_size: 32, epochs: 1, "
    "steps_per_epoch: 2, batch_size: 8, workers: 0, min_labels: 1, device: cpu, metrics_file: {m}, "
    "plots_file: {p}, checkpoint_dir: {c}}\n"
    "evaluate: {workers: 0, device: cpu}\n"
)


def _faces(out: Path) -> dict[str, bytes]:
    table = read_faces(out).to_table(columns=["face_id", "crop"])
    return dict(zip(table.column("face_id").to_pylist(), table.column("crop").to_pylist(), strict=True))


def _run(*argv: str, said: list[str] | None = None) -> tuple[int, str]:
    """``faces ARGV...`` in this process: exit code and what it printed (also appended to ``said``)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    if said is not None:
        said.append(out.getvalue() + err.getvalue())
    return code, out.getvalue() + err.getvalue()


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_env: S3Env) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(
        TINY.replace("{m}", str(tmp_path / "train.json"))
        .replace("{p}", str(tmp_path / "train.csv"))
        .replace("{c}", s3_env.url("checkpoints"))
    )
    monkeypatch.setenv("FACES_PARAMS", str(params))
    monkeypatch.setenv("FACES_CACHE", str(tmp_path / "cache"))
    write_tcs_sample(tmp_path / "sample" / "tcs", slow_delay=0.1)
    write_imfdb_sample(tmp_path / "sample" / "IMFDB_final", actors=6, movies=2, faces=6)
    return tmp_path


def test_ingest_train_evaluate_with_every_location_on_s3(workspace: Path, s3_env: S3Env) -> None:
    printed: list[str] = []
    tcs = str(workspace / "sample" / "tcs" / "faces.jsonl")
    imfdb = str(workspace / "sample" / "IMFDB_final")
    # The IMFDB folder is uploaded: the input is read from the bucket too.
    s3_env.fs.put(imfdb, s3_env.url("inputs", "IMFDB_final"), recursive=True)
    base = ["ingest", "--tcs", tcs, "--workers", "1"]
    code, said = _run(
        *base,
        "--imfdb-root",
        imfdb,
        "--out-dir",
        str(workspace / "local"),
        "--raw-dir",
        str(workspace / "raw"),
        said=printed,
    )
    assert code == 0, said
    s3_args = ["--out-dir", s3_env.url("processed"), "--raw-dir", s3_env.url("raw")]
    code, said = _run(*base, "--imfdb-root", s3_env.url("inputs", "IMFDB_final"), *s3_args, said=printed)
    assert code == 0, said

    local_faces = _faces(workspace / "local")
    assert local_faces and _faces(objstore.fetch(s3_env.url("processed"), workspace / "fetched")) == local_faces
    manifest = objstore.read_manifest(s3_env.url("processed"))
    assert manifest is not None and "summary.json" in manifest.files
    stored = [k for k in s3_env.fs.find(f"{s3_env.bucket}/raw") if "/images/" in k and not k.endswith(".jsonl")]
    assert stored, "the image store is in the bucket"
    # Content-addressed there too: raw/images/<ab>/<sha256>.<ext>, outside any run's prefix.
    assert all(re.fullmatch(rf"{s3_env.bucket}/raw/images/[0-9a-f]{{2}}/[0-9a-f]{{64}}\.\w+", k) for k in stored), (
        stored
    )

    # A second run downloads nothing again and commits the same faces.
    code, said = _run(*base, "--imfdb-root", s3_env.url("inputs", "IMFDB_final"), *s3_args, said=printed)
    assert code == 0, said
    assert _faces(objstore.fetch(s3_env.url("processed"), workspace / "fetched")) == local_faces
    s3_env.fs.invalidate_cache()
    again = [k for k in s3_env.fs.find(f"{s3_env.bucket}/raw") if "/images/" in k and not k.endswith(".jsonl")]
    assert sorted(again) == sorted(stored)

    code, said = _run("train", "--data", s3_env.url("processed"), "--model-dir", s3_env.url("models"), said=printed)
    assert code == 0, said
    model = objstore.read_manifest(s3_env.url("models"))
    assert model is not None and {"model.pt", "model.json"} <= set(model.files)
    assert objstore.read_manifest(s3_env.url("checkpoints")) is not None

    metrics = workspace / "eval.json"
    code, said = _run(
        "evaluate",
        "--model",
        s3_env.url("models"),
        "--data",
        s3_env.url("processed"),
        "--out",
        str(metrics),
        "--plots-dir",
        str(workspace / "confusion"),
        said=printed,
    )
    assert code == 0, said
    assert json.loads(metrics.read_text())["faces"] > 0
    assert "gender" in json.loads((workspace / "eval_details.json").read_text())["attributes"]

    # The credentials came from the environment: written nowhere, logged nowhere.
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    assert files_containing(workspace, s3_env.secret) == []
    assert not [text for text in printed if s3_env.secret in text]
    database = Path(str(PREFECT_API_DATABASE_CONNECTION_URL.value()).split("///", 1)[-1])
    stored = [p for p in database.parent.glob(database.name + "*") if p.is_file()]
    assert stored and not [p for p in stored if s3_env.secret.encode() in p.read_bytes()]  # params, logs, artifacts


def test_a_url_with_nothing_committed_says_what_to_do(workspace: Path, s3_env: S3Env) -> None:
    code, said = _run("train", "--data", s3_env.url("nothing-here"))
    assert code == 2
    assert f"nothing committed at {s3_env.url('nothing-here')}" in said


def _annotated(out: Path, prefix: str) -> list[tuple[str, int, int, tuple[float, ...]]]:
    from faces_core.annotate.store import read_annotations

    table = read_annotations(out).to_pylist()
    return sorted(
        (
            str(r["file"]).removeprefix(prefix),
            int(r["frame_index"] or 0),
            int(r["face"]),
            tuple(round(float(r[k]), 3) for k in ("x0", "y0", "x1", "y1")),
        )
        for r in table
    )


def test_annotate_a_folder_in_a_bucket_into_a_bucket(workspace: Path, s3_env: S3Env, tiny_model: Path) -> None:
    from faces_core.sample.faces import write_annotate_sample

    photos = write_annotate_sample(workspace / "photos", video=False).root
    s3_env.fs.put(str(photos), s3_env.url("inbox"), recursive=True)
    objstore.publish(tiny_model, s3_env.url("models"), "tiny")
    printed: list[str] = []
    code, said = _run("annotate", str(photos), "--out", str(workspace / "local"), "--model", str(tiny_model))
    assert code == 0, said
    remote = ["annotate", s3_env.url("inbox"), "--out", s3_env.url("annotations"), "--model", s3_env.url("models")]
    code, said = _run(*remote, said=printed)
    assert code == 0, said
    fetched = objstore.fetch(s3_env.url("annotations"), workspace / "fetched")
    local = _annotated(workspace / "local", f"{photos}/")
    assert local and _annotated(fetched, s3_env.url("inbox") + "/") == local  # rows name the objects' URLs
    # A second run finds every object annotated already and commits the same annotations.
    code, said = _run(*remote, said=printed)
    assert code == 0, said
    objects = len([k for k in s3_env.fs.find(f"{s3_env.bucket}/inbox")])
    assert said.startswith(f"annotated 0 files ({objects} unchanged, skipped)"), said
    assert (
        _annotated(objstore.fetch(s3_env.url("annotations"), workspace / "fetched"), s3_env.url("inbox") + "/") == local
    )
    assert not [text for text in printed if s3_env.secret in text]
    assert files_containing(workspace, s3_env.secret) == []
