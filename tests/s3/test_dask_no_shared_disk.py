"""Annotate on Dask workers that share no disk with the flow: two ``dask worker`` processes, each
with its own working directory and its own cache, read the photos and the model from the bucket
and upload their own parts; the flow commits them by manifest. The result equals a local run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from faces_core import objstore
from faces_core.sample.faces import write_annotate_sample
from tests.s3.conftest import S3Env, files_containing
from tests.train.conftest import ingested_sample, tiny_model

__all__ = ["ingested_sample", "tiny_model"]  # the train tests' fixtures, used here too

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def cluster(tmp_path: Path, s3_env: S3Env) -> Iterator[tuple[str, list[Path], list[int]]]:
    """A scheduler and two workers, each worker in its own empty folder with its own FACES_CACHE."""
    from prefect.settings import PREFECT_API_URL

    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    procs = [
        subprocess.Popen(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    homes = []
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for n in range(2):
            home = tmp_path / f"worker{n}"
            home.mkdir()
            homes.append(home)
            procs.append(
                subprocess.Popen(
                    [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--local-directory", str(home)],
                    cwd=home,
                    env={**env, "FACES_CACHE": str(home / "cache")},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address, homes, [p.pid for p in procs[1:]]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _bucket_inbox(tmp_path: Path, s3_env: S3Env, model: Path, monkeypatch: pytest.MonkeyPatch, shard_size: int) -> Path:
    """Photos written locally and uploaded to ``inbox/``, the model committed to ``models/``,
    the flow's own cache and params: the local folder of photos."""
    monkeypatch.setenv("FACES_CACHE", str(tmp_path / "flow-cache"))
    monkeypatch.setenv("FACES_PARAMS", str(tmp_path / "params.yaml"))
    (tmp_path / "params.yaml").write_text(f"annotate: {{shard_size: {shard_size}, detect: {{device: cpu}}}}\n")
    photos = write_annotate_sample(tmp_path / "photos", video=False).root
    s3_env.fs.put(str(photos), s3_env.url("inbox"), recursive=True)
    objstore.publish(model, s3_env.url("models"), "tiny")
    return photos


def _kill_when(s3_env: S3Env, prefix: str, seen: Callable[[str], bool], pid: int) -> tuple[list[int], threading.Thread]:
    """A thread that SIGKILLs ``pid`` as soon as a key under ``prefix`` passes ``seen`` (within
    120 s); the list it returns holds the pid once it has."""
    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            s3_env.fs.invalidate_cache()
            if any(seen(k) for k in s3_env.fs.find(f"{s3_env.bucket}/{prefix}")):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return killed, watcher


def _same(value: object) -> object:
    """Floats to 1/100 px: a one-thread worker's convolutions differ from the flow's two-thread
    ones in the last bits (about 1e-5 px), nothing more."""
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, list):
        return [_same(v) for v in value]
    return value


def _rows(out: Path, prefix: str) -> list[dict[str, object]]:
    from faces_core.annotate import store

    rows = store.read_annotations(out).to_pylist()
    rows = [
        {
            k: (str(v).removeprefix(prefix) if k == "file" else _same(v))
            for k, v in r.items()
            if k not in ("run_id", "annotated_at")
        }
        for r in rows
    ]
    return sorted(rows, key=lambda r: (str(r["file"]), r["frame_index"] or 0, r["face"]))


def test_annotate_on_workers_without_shared_disk(
    tmp_path: Path,
    s3_env: S3Env,
    tiny_model: Path,
    cluster: tuple[str, list[Path], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.annotate import annotate

    address, homes, _ = cluster
    photos = _bucket_inbox(tmp_path, s3_env, tiny_model, monkeypatch, shard_size=4)

    local = annotate(inputs=[str(photos)], out=str(tmp_path / "local"), model_dir=str(tiny_model))
    on_dask = annotate.with_options(task_runner=DaskTaskRunner(address=address))
    remote = on_dask(inputs=[s3_env.url("inbox")], out=s3_env.url("annotations"), model_dir=s3_env.url("models"))
    assert remote["files"] == local["files"] and remote["faces"] == local["faces"] > 0

    # The workers fetched the photos and the model into their own caches and wrote the parts there;
    # the flow's copy of the output holds none of them: they reached it only through the bucket.
    for home in homes:
        assert list((home / "cache").rglob("*.parquet")), f"{home.name} wrote no part"
    flow_mirror = objstore.mirror(s3_env.url("annotations"))
    assert not list(flow_mirror.rglob(f"part-{remote['run_id']}-*.parquet"))
    fetched = objstore.fetch(s3_env.url("annotations"), tmp_path / "fetched")
    assert _rows(fetched, s3_env.url("inbox") + "/") == _rows(tmp_path / "local", f"{photos}/")

    again = on_dask(inputs=[s3_env.url("inbox")], out=s3_env.url("annotations"), model_dir=s3_env.url("models"))
    assert again["files"] == 0 and again["skipped"] == local["files"] + local["skipped"]
    assert files_containing(tmp_path, s3_env.secret) == []


def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
    s3_env: S3Env,
    tiny_model: Path,
    cluster: tuple[str, list[Path], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL one worker once the first shard has uploaded its parts; whatever that run does
    (Dask gives the lost shard to the other worker, or the run fails), a re-run leaves every
    file annotated exactly once, with the annotations of a local run."""
    from prefect_dask import DaskTaskRunner

    from faces_core.annotate import store
    from flows.annotate import annotate

    address, _, workers = cluster
    photos = _bucket_inbox(tmp_path, s3_env, tiny_model, monkeypatch, shard_size=2)
    annotate(inputs=[str(photos)], out=str(tmp_path / "local"), model_dir=str(tiny_model))
    killed, watcher = _kill_when(s3_env, "annotations", lambda key: "/_entries/" in key, workers[0])
    on_dask = annotate.with_options(task_runner=DaskTaskRunner(address=address))
    args = {"inputs": [s3_env.url("inbox")], "out": s3_env.url("annotations"), "model_dir": s3_env.url("models")}
    with contextlib.suppress(Exception):  # the run may fail with its worker; the re-run makes up for it
        on_dask(**args)
    watcher.join(timeout=130)
    assert killed, "no shard finished, so no worker was killed"
    on_dask(**args)  # the surviving worker finishes whatever is left

    fetched = objstore.fetch(s3_env.url("annotations"), tmp_path / "fetched")
    assert _rows(fetched, s3_env.url("inbox") + "/") == _rows(tmp_path / "local", f"{photos}/")
    prefix = s3_env.url("inbox") + "/"
    runs_of = {}
    for row in store.read_files(fetched).to_pylist():  # every committed file row of every run
        runs_of.setdefault(str(row["file"]).removeprefix(prefix), []).append(row["run_id"])
    local_files = {str(r["file"]).removeprefix(f"{photos}/") for r in store.read_files(tmp_path / "local").to_pylist()}
    assert set(runs_of) == local_files  # nothing lost
    assert all(len(runs) == 1 for runs in runs_of.values()), runs_of  # nothing annotated twice


def test_the_whole_pipeline_on_workers_without_shared_disk(
    tmp_path: Path,
    s3_env: S3Env,
    cluster: tuple[str, list[Path], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ingest, train, evaluate and the scheduled inbox annotation on two workers with their own
    caches, every location in the bucket. Ingest's shards fetch their images from it (the image
    store through its manifest, IMFDB crops as objects) and upload their parts: the committed
    dataset has the local run's face ids and crop bytes. Train and evaluate fetch the dataset
    and the model where they run; the inbox's photos are annotated straight from the bucket."""
    from prefect_dask import DaskTaskRunner

    from faces_cli.ingest import sample_host_proxies
    from faces_core.sample.imfdb import write_imfdb_sample
    from faces_core.sample.tcs import load_routes, write_tcs_sample
    from faces_core.storage import read_faces
    from faces_core.testing import LoopbackServer
    from flows.ingest import ingest

    address, homes, _ = cluster
    monkeypatch.setenv("FACES_CACHE", str(tmp_path / "flow-cache"))
    monkeypatch.setenv("FACES_PARAMS", str(tmp_path / "params.yaml"))
    (tmp_path / "params.yaml").write_text(
        "download: {timeout_s: 2.0, retries: 1, backoff_s: 0.05, backoff_max_s: 0.2}\n"
        "train: {recipe: cnn, backbone: mobilenet_v3_large, weights: none, input_size: 32, epochs: 1, "
        "steps_per_epoch: 2, batch_size: 8, workers: 0, min_labels: 1, device: cpu, "
        f"metrics_file: {tmp_path / 'train.json'}, plots_file: {tmp_path / 'train.csv'}, "
        f"checkpoint_dir: {s3_env.url('checkpoints')}}}\n"
        f"evaluate: {{workers: 0, device: cpu, metrics_file: {tmp_path / 'eval.json'}, "
        f"plots_dir: {tmp_path / 'plots'}}}\n"
        "annotate: {shard_size: 4, detect: {device: cpu}}\n"
    )
    tcs = write_tcs_sample(tmp_path / "tcs", slow_delay=0.1)
    imfdb = tmp_path / "IMFDB_final"
    write_imfdb_sample(imfdb, actors=6, movies=2, faces=6)
    s3_env.fs.put(str(imfdb), s3_env.url("inputs", "IMFDB_final"), recursive=True)
    s3_env.fs.put_file(str(tcs.jsonl), s3_env.url("inputs", "faces.jsonl"))

    def faces(out: Path) -> dict[str, bytes]:
        table = read_faces(out).to_table(columns=["face_id", "crop"])
        return dict(zip(table.column("face_id").to_pylist(), table.column("crop").to_pylist(), strict=True))

    def run(flow: Any, **where: str) -> dict[str, Any]:
        # A fresh image server per run: the sample's flaky URL fails its first requests.
        with LoopbackServer(load_routes(tcs.jsonl.parent)) as images:
            proxies = sample_host_proxies(images, str(tcs.jsonl))
            result: dict[str, Any] = flow(shard_size=5, workers=1, host_proxies=proxies, **where)
            return result

    local = {"tcs": str(tcs.jsonl), "imfdb_root": str(imfdb)}
    run(ingest, **local, out_dir=str(tmp_path / "local"), raw_dir=str(tmp_path / "raw"))
    on_dask = ingest.with_options(task_runner=DaskTaskRunner(address=address))
    s3 = {"out_dir": s3_env.url("processed"), "raw_dir": s3_env.url("raw")}
    inputs = {"tcs": s3_env.url("inputs", "faces.jsonl"), "imfdb_root": s3_env.url("inputs", "IMFDB_final")}
    summary = run(on_dask, **inputs, **s3)
    assert summary["faces"] > 5, "the sample must span several shards"
    # The workers fetched images into their own caches and wrote parts there.
    for home in homes:
        assert list((home / "cache").rglob("part-*.parquet")), f"{home.name} partitioned no shard"
    fetched = objstore.fetch(s3_env.url("processed"), tmp_path / "fetched")
    assert faces(fetched) == faces(tmp_path / "local")

    from flows.annotate import annotate, annotate_inbox
    from flows.evaluate import evaluate
    from flows.train import train

    dask = DaskTaskRunner(address=address)
    trained = train.with_options(task_runner=dask)(data_dir=s3_env.url("processed"), model_dir=s3_env.url("models"))
    assert trained["model"] == s3_env.url("models", "model.pt")
    assert objstore.read_manifest(s3_env.url("checkpoints")) is not None
    scored = evaluate.with_options(task_runner=dask)(model_dir=s3_env.url("models"), data_dir=s3_env.url("processed"))
    assert scored["attributes"]["gender"]["labelled"] > 0

    photos = write_annotate_sample(tmp_path / "photos", video=False).root
    s3_env.fs.put(str(photos), s3_env.url("inbox"), recursive=True)
    inbox = annotate_inbox.with_options(task_runner=dask)
    done = inbox(folders=[s3_env.url("inbox")], out=s3_env.url("annotations"), model_dir=s3_env.url("models"))
    assert done["files"] > 0 and done["arriving"] == 0
    # The same annotations as annotating the local folder with the same (fetched) model here.
    model = objstore.fetch(s3_env.url("models"), tmp_path / "model")
    annotate(inputs=[str(photos)], out=str(tmp_path / "annotated-locally"), model_dir=str(model))
    in_bucket = objstore.fetch(s3_env.url("annotations"), tmp_path / "annotations")
    assert _rows(in_bucket, s3_env.url("inbox") + "/") == _rows(tmp_path / "annotated-locally", f"{photos}/")
    again = inbox(folders=[s3_env.url("inbox")], out=s3_env.url("annotations"), model_dir=s3_env.url("models"))
    assert again["files"] == 0
    assert files_containing(tmp_path, s3_env.secret) == []


def test_an_ingest_worker_killed_mid_run_then_a_rerun_gives_the_local_dataset(
    tmp_path: Path,
    s3_env: S3Env,
    cluster: tuple[str, list[Path], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL a worker once the first ingest shard has uploaded a part: after a re-run the
    committed dataset has the local run's face ids and crop bytes, each face once, and no
    uncommitted run prefix is left behind."""
    from prefect_dask import DaskTaskRunner

    from faces_core.sample.imfdb import write_imfdb_sample
    from faces_core.storage import read_faces
    from flows.ingest import ingest

    address, _, workers = cluster
    monkeypatch.setenv("FACES_CACHE", str(tmp_path / "flow-cache"))
    monkeypatch.setenv("FACES_PARAMS", str(tmp_path / "params.yaml"))
    (tmp_path / "params.yaml").write_text("ingest: {shard_size: 3}\n")
    imfdb = tmp_path / "IMFDB_final"
    write_imfdb_sample(imfdb, actors=6, movies=2, faces=6)
    s3_env.fs.put(str(imfdb), s3_env.url("inputs", "IMFDB_final"), recursive=True)
    ingest(tcs="", imfdb_root=str(imfdb), out_dir=str(tmp_path / "local"), raw_dir=str(tmp_path / "raw"), workers=1)
    killed, watcher = _kill_when(s3_env, "processed", lambda key: key.endswith(".parquet"), workers[0])
    on_dask = ingest.with_options(task_runner=DaskTaskRunner(address=address))
    args = {"tcs": "", "imfdb_root": s3_env.url("inputs", "IMFDB_final"), "workers": 1}
    args |= {"out_dir": s3_env.url("processed"), "raw_dir": s3_env.url("raw")}
    with contextlib.suppress(Exception):  # the run may fail with its worker; the re-run makes up for it
        on_dask(**args)
    watcher.join(timeout=130)
    assert killed, "no shard finished, so no worker was killed"
    on_dask(**args)

    def faces(out: Path) -> list[tuple[str, bytes]]:
        table = read_faces(out).to_table(columns=["face_id", "crop"])
        return sorted(zip(table.column("face_id").to_pylist(), table.column("crop").to_pylist(), strict=True))

    committed = faces(objstore.fetch(s3_env.url("processed"), tmp_path / "fetched"))
    assert committed == faces(tmp_path / "local")  # nothing lost, nothing twice
    manifest = objstore.read_manifest(s3_env.url("processed"))
    assert manifest is not None
    s3_env.fs.invalidate_cache()
    runs = {k.split("/_runs/")[1].split("/")[0] for k in s3_env.fs.find(f"{s3_env.bucket}/processed") if "/_runs/" in k}
    assert runs == {e.key.split("/")[1] for e in manifest.files.values()}  # killed run's prefix removed
