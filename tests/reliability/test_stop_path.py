"""The stop path every command shares (faces_cli/stopping.py): the bound holds whatever is blocked.

Defect: SIGTERM during an ingest whose TCS file streamed from a slow server left the process
alive for minutes (here: still running 120 s after the signal). While a Prefect flow runs,
Prefect's own SIGTERM handler takes the signal and hands it back only after the flow engine
has unwound, and the engine waited for the task thread stuck in the read; so the command's
deadline never started. Now the signal itself arms the deadline (a wakeup descriptor the
interpreter writes for every signal, whatever handler is installed), the deadline outlives
the command's block (threads joined at interpreter exit cannot hold the process), and long
loops in task threads see a process-wide stop flag.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faces_cli.stopping import FORCE_AFTER_S, STOP_GRACE_S, command_stop
from faces_core.cancel import STOP_REQUESTED, StopRequested
from faces_core.ingest.sources.tcs import read_tcs
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.testing import LoopbackServer, Route
from tests.conftest import REPO


def _script(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "stop_case.py"
    script.write_text(body)
    return subprocess.Popen(
        [sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"still running {timeout} s later:\n{out}") from None
    return proc.returncode, out, time.monotonic() - started


def test_the_signal_arms_the_deadline_even_under_a_foreign_handler(tmp_path: Path) -> None:
    """Prefect's handler (here a stand-in that swallows the signal) cannot keep the process alive."""
    proc = _script(
        tmp_path,
        "import os, signal, threading, time\n"
        "from faces_cli.stopping import command_stop\n"
        "with command_stop('case', grace_s=1.0):\n"
        "    signal.signal(signal.SIGTERM, lambda s, f: None)  # takes the signal, raises nothing\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(120)\n"
        "print('not reached', flush=True)\n",
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    code, out, took = _finish(proc)
    assert code == 143, out
    assert "faces case: stopped by SIGTERM (forced after 1 s of winding down)" in out
    assert "not reached" not in out
    assert took < 5


def test_the_deadline_outlives_the_block_so_threads_joined_at_exit_cannot_hold_the_process(tmp_path: Path) -> None:
    proc = _script(
        tmp_path,
        "import signal, threading, time\n"
        "from prefect.exceptions import TerminationSignal\n"
        "from faces_cli.stopping import command_stop\n"
        "with command_stop('case', grace_s=1.0):\n"
        "    threading.Thread(target=time.sleep, args=(120,)).start()  # not a daemon: joined at exit\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(120)\n"
        "    except TerminationSignal:\n"
        "        print('stopping', flush=True)\n"
        "print('left the block', flush=True)\n",
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    code, out, took = _finish(proc)
    assert code == 143, out
    assert out.splitlines()[:2] == ["stopping", "left the block"], out
    assert took < 5


def test_a_block_without_a_signal_leaves_nothing_behind() -> None:
    term, intr = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with command_stop("case", grace_s=0.05):
        assert signal.getsignal(signal.SIGTERM) is not term
    time.sleep(0.2)  # an armed deadline would have ended this process by now
    assert signal.getsignal(signal.SIGTERM) is term and signal.getsignal(signal.SIGINT) is intr
    assert signal.set_wakeup_fd(-1) == -1  # the previous (none) is back
    assert not STOP_REQUESTED.is_set()
    assert FORCE_AFTER_S < STOP_GRACE_S == 10.0


def test_a_stop_request_ends_a_tcs_fetch_in_a_worker_thread() -> None:
    """The TCS read looks at the stop flag between chunks: a dripping server no longer holds it."""
    drip = Route(b'{"content": "x"}\n' * 1000, chunk_size=1, chunk_delay=0.2)
    outcome: list[BaseException] = []

    def fetch(url: str) -> None:
        try:
            read_tcs(url)
        except BaseException as exc:
            outcome.append(exc)

    with LoopbackServer({"/tcs.jsonl": drip}) as server:
        worker = threading.Thread(target=fetch, args=(server.url("/tcs.jsonl"),), daemon=True)
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive()
        STOP_REQUESTED.set()
        try:
            worker.join(timeout=3)
        finally:
            STOP_REQUESTED.clear()
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], StopRequested), outcome


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness", "no_env_proxy")
def test_ingest_stops_within_seconds_while_its_tcs_file_drips_and_a_fifo_sits_among_the_crops(
    tmp_path: Path,
) -> None:
    """The reported case: the command, not a test driver, with the API of a real Prefect server."""
    from prefect.settings import PREFECT_API_URL

    imfdb = write_imfdb_sample(tmp_path / "IMFDB_final")
    crop = next((tmp_path / "IMFDB_final").rglob("*.jpg"))
    crop.unlink()
    os.mkfifo(crop)
    (tmp_path / "params.yaml").write_text("download: {allow_private_hosts: true}\n")
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "FACES_PARAMS": str(tmp_path / "params.yaml"),
    }
    drip = Route(b'{"content": "x"}\n' * 5000, chunk_size=1, chunk_delay=0.2)
    with LoopbackServer({"/tcs.jsonl": drip}) as server:
        cmd = [sys.executable, "-m", "faces_cli", "ingest", "--tcs", server.url("/tcs.jsonl")]
        cmd += ["--imfdb-root", str(imfdb.root), "--out-dir", str(tmp_path / "out"), "--raw-dir", str(tmp_path / "raw")]
        proc = subprocess.Popen(
            [*cmd, "--no-sample-images"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 90
        while not server.hits and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None and server.hits, "the TCS file was never asked for"
        time.sleep(2)  # dripping now
        proc.send_signal(signal.SIGTERM)
        code, out, took = _finish(proc, timeout=60)
    assert code == 143, out[-3000:]
    assert "faces ingest: stopped by SIGTERM" in out
    assert took < STOP_GRACE_S, (took, out[-3000:])
    assert not (tmp_path / "out" / "faces").exists()  # nothing half-written


@pytest.mark.slow
@pytest.mark.usefixtures("no_env_proxy")
def test_a_stop_mid_read_ends_the_processes_the_command_started(tmp_path: Path) -> None:
    """A TCS file whose server sends a few bytes then goes silent, and a SIGTERM mid-read: the
    command ends within the grace period, and the temporary Prefect server it started (a uvicorn
    child) must not outlive it (``os._exit`` alone left it running).

    The file is streamed in the flow's own thread (chunk by chunk), where the signal ends the
    blocked read, so this stop is graceful; when a worker thread blocks instead, the stop is
    forced (``test_the_signal_arms_the_deadline_even_under_a_foreign_handler``). Either way
    nothing may be left running."""
    (tmp_path / "params.yaml").write_text("download: {allow_private_hosts: true}\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a temporary server of its own
    env.update({"FACES_PARAMS": str(tmp_path / "params.yaml"), "PREFECT_HOME": str(tmp_path / "prefect")})
    silent = Route(b'{"content": "x"}\n' * 2000, chunk_size=10, chunk_delay=25)
    with LoopbackServer({"/tcs.jsonl": silent}) as server:
        cmd = [sys.executable, "-m", "faces_cli", "ingest", "--tcs", server.url("/tcs.jsonl"), "--imfdb-root", ""]
        cmd += ["--out-dir", str(tmp_path / "out"), "--raw-dir", str(tmp_path / "raw"), "--no-sample-images"]
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while not server.hits and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None and server.hits, "the TCS file was never asked for"
        session = proc.pid
        assert len(_in_session(session)) >= 2, "no temporary Prefect server to check"
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        code, out, took = _finish(proc, timeout=60)
        time.sleep(2)
        left = _in_session(session)
        for pid in left:  # leave nothing running whatever the outcome
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert code == 143, out[-3000:]
    assert took < STOP_GRACE_S and "run the same command again to resume" in out, (took, out[-3000:])
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in left]


def _in_session(sid: int) -> list[int]:
    """Live processes of session ``sid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found
