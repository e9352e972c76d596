"""Operations helpers: the DVC lock, params profiles and every `faces doctor` check.

Each doctor check is shown its failure for real: a closed port, a proxy in the environment,
a Late flow run on a real Prefect server, DVC's lock held through zc.lockfile (as DVC takes
it), a missing model, Parquet written with an older schema.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from faces_cli.demo import profile_overrides
from faces_cli.main import main
from faces_core import doctor, dvcrepo
from tests.conftest import REPO


def _dvc_repo(tmp_path: Path) -> Path:
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def test_repo_lock_queues_a_second_caller_and_times_out(tmp_path: Path) -> None:
    root = _dvc_repo(tmp_path)
    order: list[str] = []
    with dvcrepo.repo_lock(root, wait_s=1):
        state = dvcrepo.dvc_lock_state(root)
        assert state.ours_held and state.ours_pid is not None and not state.held
        with pytest.raises(dvcrepo.DvcBusyError, match=r"raise serve\.dvc_lock_wait_s"), dvcrepo.repo_lock(root, 0.6):
            pass

        def second() -> None:
            with dvcrepo.repo_lock(root, wait_s=10):
                order.append("second")

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.0)
        order.append("first done")
    waiter.join(timeout=10)
    assert order == ["first done", "second"]
    assert not dvcrepo.dvc_lock_state(root).ours_held


def test_repo_lock_refuses_a_directory_without_dvc(tmp_path: Path) -> None:
    with pytest.raises(dvcrepo.DvcNotFoundError, match="not a DVC repository"), dvcrepo.repo_lock(tmp_path, 0):
        pass


def test_run_dvc_streams_output_lines(tmp_path: Path) -> None:
    lines: list[str] = []
    rc, output = dvcrepo.run_dvc(["--version"], root=_dvc_repo(tmp_path), on_line=lines.append)
    assert rc == 0
    assert lines == ["3.67.1"]
    assert output.splitlines() == lines


def test_stages_run_reads_dvc_output() -> None:
    out = "Stage 'sample' didn't change, skipping\nRunning stage 'train':\n> python -m flows.train\nRunning stage 'evaluate':\n"
    assert dvcrepo.stages_run(out) == ["train", "evaluate"]


def test_imfdb_profile_becomes_set_params() -> None:
    args = profile_overrides("imfdb", REPO)
    assert args == [
        "-S",
        "ingest.tcs=null",
        "-S",
        "ingest.imfdb_root=data/IMFDB_final",
        "-S",
        "ingest.inputs=data/IMFDB_final",
        "-S",
        "train.epochs=8",
        "-S",
        "evaluate.split=test",
        "-S",
        "annotate.inputs=[data/photos]",
    ]


def test_unknown_profile_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["repro", "--profile", "nope"]) == 2
    assert "profiles here: imfdb" in capsys.readouterr().err


# --- doctor --------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_doctor_server_unreachable_and_unset() -> None:
    found = doctor.check_server(f"http://127.0.0.1:{_closed_port()}/api", timeout_s=1)
    assert found.status == "problem" and "does not answer" in found.message and "prefect server start" in found.fix
    assert doctor.check_server(None).status == "note"


def test_doctor_proxy_capturing_loopback() -> None:
    api = "http://127.0.0.1:4200/api"
    captured = doctor.check_proxy({"http_proxy": "http://proxy.corp:3128"}, api)
    assert captured.status == "problem" and "no_proxy=127.0.0.1,localhost,::1" in captured.fix
    kept_off = doctor.check_proxy({"http_proxy": "http://proxy.corp:3128", "no_proxy": "localhost,127.0.0.1"}, api)
    assert kept_off.status == "ok"
    assert doctor.check_proxy({}, api).status == "ok"
    assert doctor.check_proxy({"HTTPS_PROXY": "http://p:1"}, "https://api.prefect.cloud/api/x").status == "ok"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_doctor_late_runs_mean_no_serve_process() -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Late

    @flow(name="doctor-late-probe")
    def probe() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(probe, name="waiting-for-serve", state=Late())
        try:
            found = doctor.check_serve(str(PREFECT_API_URL.value()))
        finally:
            client.delete_flow_run(run.id)
        assert found.status == "problem"
        assert "waiting-for-serve" in found.message and "faces serve" in found.fix
        assert doctor.check_serve(str(PREFECT_API_URL.value())).status == "ok"


def test_doctor_dvc_lock_held_by_dvc(tmp_path: Path) -> None:
    root = _dvc_repo(tmp_path)
    (root / ".dvc" / "tmp").mkdir()
    assert doctor.check_dvc_lock(root).status == "ok"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, zc.lockfile; lock = zc.lockfile.LockFile(sys.argv[1]); print('held', flush=True); time.sleep(60)",
            str(root / ".dvc" / "tmp" / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        found = doctor.check_dvc_lock(root)
        assert found.status == "problem" and f"process {holder.pid}" in found.message
    finally:
        holder.kill()
        holder.wait()
    assert doctor.check_dvc_lock(root).status == "ok"  # the lock died with its process


def test_doctor_model_missing(tmp_path: Path) -> None:
    found = doctor.check_model(tmp_path / "models")
    assert found.status == "problem" and "dvc repro train" in found.fix
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"x")
    (tmp_path / "models" / "model.json").write_text("{}")
    assert doctor.check_model(tmp_path / "models").status == "ok"


def test_doctor_parquet_from_older_version(tmp_path: Path) -> None:
    from faces_core.storage import FACE_SCHEMA

    part = tmp_path / "faces" / "source=tcs" / "bucket=50-100" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    assert doctor.check_parquet(tmp_path).status == "note"
    pq.write_table(pa.Table.from_pylist([], schema=FACE_SCHEMA), part)
    assert doctor.check_parquet(tmp_path).status == "ok"
    old = pa.schema([f for f in FACE_SCHEMA if f.name != "min_side"])
    pq.write_table(pa.Table.from_pylist([], schema=old), part)
    found = doctor.check_parquet(tmp_path)
    assert found.status == "problem" and "missing ['min_side']" in found.message
    assert "dvc repro --force ingest" in found.fix


def test_doctor_command_prints_each_check_with_fixes(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "p")}
    env |= {"PREFECT_API_URL": f"http://127.0.0.1:{_closed_port()}/api", "http_proxy": "http://proxy.corp:3128"}
    (tmp_path / "params.yaml").write_text("train: {model_dir: models}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "faces_cli", "doctor"],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    checks = {line.split()[1] for line in lines if line.split() and line.split()[0] in ("ok", "note", "PROBLEM")}
    assert checks == {"server", "ui", "proxy", "serve", "dvc-lock", "outputs", "model", "parquet"}
    assert any(line.startswith("PROBLEM server") for line in lines)
    assert any(line.startswith("PROBLEM proxy") for line in lines)
    assert any(line.startswith("PROBLEM model") for line in lines)
    assert sum("fix:" in line for line in lines) >= 3


@pytest.mark.slow
def test_doctor_and_serve_spot_a_ui_calling_another_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`prefect server start --port N` without PREFECT_UI_API_URL: the UI calls :4200 and is blank."""
    import os

    from faces_cli.serve import warn_if_ui_elsewhere

    port = _closed_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_UI")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while doctor.check_server(api, timeout_s=1).status != "ok":
            assert time.monotonic() < deadline and server.poll() is None, "the Prefect server did not start"
            time.sleep(0.5)
        found = doctor.check_ui(api)
        assert found.status == "problem" and ":4200/api" in found.message
        assert f"PREFECT_UI_API_URL={api} prefect server start --port {port}" in found.fix
        warn_if_ui_elsewhere(api)
        assert f"PREFECT_UI_API_URL={api}" in capsys.readouterr().err
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_doctor_ui_urls_that_reach_the_api() -> None:
    assert doctor._same_api("/api", "http://127.0.0.1:4201/api")  # relative: any port
    assert doctor._same_api("http://localhost:4201/api/", "http://127.0.0.1:4201/api")
    assert not doctor._same_api("http://127.0.0.1:4200/api", "http://127.0.0.1:4201/api")
    assert doctor.check_ui(None).status == "note"


def test_doctor_outputs_inside_a_dvc_stage_output(tmp_path: Path) -> None:
    repo = _dvc_repo(tmp_path)
    (repo / "params.yaml").write_text("annotate: {out: data/annotations}\n")
    (repo / "dvc.yaml").write_text("stages:\n  annotate:\n    cmd: x\n    outs:\n      - ${annotate.out}\n")
    clash = doctor.check_outputs({"annotate.inbox.out": str(repo / "data/annotations")})
    assert clash.status == "problem" and "stage annotate" in clash.message and "dvc add" in clash.fix
    inside = doctor.check_outputs({"annotate.adhoc_out": str(repo / "data/annotations/mine")})
    assert inside.status == "problem"
    parent = doctor.check_outputs({"annotate.adhoc_out": str(repo / "data")})  # would write data/annotations/
    assert parent.status == "problem"
    assert doctor.check_outputs({"annotate.inbox.out": str(repo / "data/inbox-annotations")}).status == "ok"


def test_serve_ends_a_stop_that_does_not_wind_down() -> None:
    """`faces serve` after Ctrl-C: when the runner has not wound down within the grace (an API
    slow under load), the local server is killed and the command ends with its usual last line."""
    code = (
        "import signal\n"
        "from faces_cli import serve\n"
        "from faces_cli.stopping import StopDeadline\n"
        "serve._FORCED_STOPS.append(lambda: print('server killed', flush=True))\n"
        "deadline = StopDeadline(0.2, serve._force_stop)\n"
        "deadline.arm(signal.SIGINT)\n"
        "signal.pause()  # a wind-down that never ends\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert lines == [
        "faces serve: the runner did not wind down within 0.2 s; ending it.",
        "server killed",
        "Stopped the Prefect server.",
        "faces serve: stopped.",
    ]
    # A stop that winds down in time is left alone.
    from faces_cli.stopping import StopDeadline

    forced: list[int] = []
    deadline = StopDeadline(0.05, lambda signum, grace: forced.append(signum))
    deadline.arm(2)
    deadline.disarm()
    time.sleep(0.2)
    assert forced == []  # nothing forced
