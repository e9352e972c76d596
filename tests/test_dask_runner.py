"""Ingest's shard tasks on a local 2-worker Dask cluster give the same dataset as local threads.

The cluster is a real ``distributed.LocalCluster`` (worker processes) and the flow reports to
the session's real Prefect server; shards are small so the IMFDB sample spans several of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.storage import read_faces
from flows import runner
from flows.ingest import ingest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _dataset(out: Path) -> pa.Table:
    return read_faces(out).to_table().sort_by("face_id")


def _run(flow: Any, root: Path, out: Path) -> dict[str, Any]:
    result: dict[str, Any] = flow(
        tcs="", imfdb_root=str(root), out_dir=str(out), raw_dir=str(out.parent / "raw"), shard_size=7, workers=1
    )
    return result


def test_ingest_on_local_dask_cluster_matches_local_run(tmp_path: Path) -> None:
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    root = tmp_path / "IMFDB_final"
    write_imfdb_sample(root)
    local = _run(ingest, root, tmp_path / "local" / "processed")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = ingest.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        dask = _run(on_dask, root, tmp_path / "dask" / "processed")
        workers_used = len(cluster.scheduler_info["workers"])
        # Every task that ever reached a state, by name: what the scheduler actually ran.
        ran = {name: prefix.state_counts["memory"] for name, prefix in cluster.scheduler.task_prefixes.items()}
    assert workers_used == 2
    assert local["faces"] > 7, "the sample must span several shards"
    shards = -(-local["sources"]["imfdb"]["images"] // 7)
    assert ran == {"parse_imfdb": 1, "partition_shard_task": shards}
    assert dask["faces"] == local["faces"] and dask["sources"] == local["sources"]
    assert _dataset(tmp_path / "dask" / "processed").equals(_dataset(tmp_path / "local" / "processed"))


def test_runner_switch_from_flags_and_params() -> None:
    assert runner.runner_settings(params={}).task_runner == "threads"
    assert runner.make_task_runner(runner.runner_settings(params={})) is None
    by_address = runner.runner_settings(params={}, dask_address="tcp://127.0.0.1:8786")
    assert (by_address.task_runner, by_address.dask_address) == ("dask", "tcp://127.0.0.1:8786")
    from_params = runner.runner_settings(params={"runner": {"task_runner": "dask", "dask_workers": 3}})
    assert type(runner.make_task_runner(from_params)).__name__ == "DaskTaskRunner"
    with pytest.raises(ValueError, match="task_runner must be one of"):
        runner.runner_settings(params={"runner": {"task_runner": "ray"}})
    with pytest.raises(ValueError, match="unknown key"):
        runner.runner_settings(params={"runner": {"workers": 2}})


def test_served_flows_declare_dask_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`faces serve --dask-address` exports its choice; a flow-run process reads it on import."""
    from prefect.task_runners import ThreadPoolTaskRunner

    default = ThreadPoolTaskRunner()
    # setenv (not delenv) so the values export() writes are undone after the test.
    monkeypatch.setenv(runner.ENV_TASK_RUNNER, "")
    monkeypatch.setenv(runner.ENV_DASK_ADDRESS, "")
    monkeypatch.setenv("FACES_PARAMS", "/nonexistent/params.yaml")
    assert runner.flow_task_runner(default) is default
    runner.export(runner.runner_settings(params={}, dask_address="tcp://127.0.0.1:8786"))
    declared = runner.flow_task_runner(default)
    assert type(declared).__name__ == "DaskTaskRunner" and declared.address == "tcp://127.0.0.1:8786"


def _annotations(out: Path) -> list[dict[str, Any]]:
    """Current annotation rows without what differs between two runs (run id, times)."""
    from faces_core.annotate import store

    rows = store.read_annotations(out).to_pylist()
    rows = [{k: v for k, v in row.items() if k not in ("run_id", "annotated_at")} for row in rows]
    return sorted(rows, key=lambda r: (r["file"], r["frame_index"], r["face"]))


def test_annotate_on_local_dask_cluster_matches_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Annotate's shard tasks run on the cluster's worker processes, each committing its own
    Parquet parts, and give the same faces, files and errors as the local run."""
    import json

    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from faces_core.annotate import store
    from faces_core.sample.faces import write_annotate_sample
    from flows.annotate import annotate

    sample = write_annotate_sample(tmp_path / "photos", video=False)
    params = tmp_path / "params.yaml"
    params.write_text(
        json.dumps({"annotate": {"shard_size": 3, "lock_wait_s": 5, "detect": {"max_side": 640, "device": "cpu"}}})
    )
    monkeypatch.setenv("FACES_PARAMS", str(params))
    local = annotate(inputs=[str(sample.root)], out=str(tmp_path / "local"), model_dir=str(tmp_path / "no-model"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = annotate.with_options(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        dask = on_dask(inputs=[str(sample.root)], out=str(tmp_path / "dask"), model_dir=str(tmp_path / "no-model"))
        ran = {name: prefix.state_counts["memory"] for name, prefix in cluster.scheduler.task_prefixes.items()}
    shards = -(-local["files"] // 3)
    assert shards >= 3, "the sample must span several shards"
    assert ran == {"annotate_shard": shards}  # the file walk runs in the flow; every shard on a worker
    for key in ("files", "faces", "frames", "errors", "reasons"):
        assert dask[key] == local[key], key
    assert local["faces"] > 0 and local["errors"] > 0
    # Same faces, files and labels; coordinates equal up to float rounding (a Dask worker runs
    # torch on one thread, and oneDNN's summation order follows the thread count).
    on_dask, here = _annotations(tmp_path / "dask"), _annotations(tmp_path / "local")
    assert [(r["file"], r["frame_index"], r["face"]) for r in on_dask] == [
        (r["file"], r["frame_index"], r["face"]) for r in here
    ]
    for a, b in zip(on_dask, here, strict=True):
        floats = [k for k, v in b.items() if isinstance(v, float) or k == "landmarks"]
        assert {k: v for k, v in a.items() if k not in floats} == {k: v for k, v in b.items() if k not in floats}
        for key in floats:
            assert a[key] == pytest.approx(b[key], abs=0.05), key
    assert len(list((tmp_path / "dask" / store.ANNOTATIONS_DIR).rglob("*.parquet"))) == len(
        list((tmp_path / "local" / store.ANNOTATIONS_DIR).rglob("*.parquet"))
    )


def test_the_dask_runner_without_its_optional_packages_is_one_line_saying_what_to_install(tmp_path: Path) -> None:
    """prefect-dask and distributed are the optional ``dask`` extra: asking for the runner
    without them is exit 2 and the install command, not an ImportError traceback; the
    threads runner does not need them."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import sys\n"
        "sys.modules['prefect_dask'] = None  # as if the extra were not installed: its import fails\n"
        "from faces_cli.main import main\n"
        f"sys.exit(main(['ingest', '--task-runner', 'dask', '--tcs', '', '--imfdb-root', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("faces ingest:")]
    assert len(lines) == 1 and "pip install -e '.[dask]'" in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert runner.make_task_runner(runner.RunnerSettings(task_runner="threads")) is None
