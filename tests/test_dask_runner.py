"""Ingest's shard tasks on a local 2-worker Dask cluster give the same dataset as local threads.

The cluster is a real ``distributed.LocalCluster`` (worker processes) and the flow reports to
the session's real Prefect server; shards are small so the IMFDB sample spans several of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from faces_core.ingest.partition import read_faces
from faces_core.sample.imfdb import write_imfdb_sample
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
