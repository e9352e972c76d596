"""Two ingest runs on the same output directory at once: serialised by a lock, or refused.

A run holds an ``flock`` on ``<out_dir>/.ingest.lock`` from its start to its commit. A
second run waits up to ``ingest.lock_wait_s`` and then starts, or gives up with a message
naming the holder and what to do. Both cases run two real processes.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest

from faces_core.storage import LOCK_FILE, OutputBusyError, output_lock
from faces_core.testing import LoopbackServer, Route
from tests.conftest import REPO
from tests.reliability.faults import Sample, driver_args, leftovers, phase_times, run_driver, snapshot, write_sample

pytestmark = pytest.mark.slow


def _slow(sample: Sample) -> dict[str, Route]:
    """Routes answering after >= 0.5 s: the first run holds the lock for seconds."""
    return {url: dataclasses.replace(route, delay=max(route.delay, 0.5)) for url, route in sample.routes.items()}


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_phase(proc: subprocess.Popen[str], name: str) -> str:
    """Read the driver's stdout until it announces ``name``; return what was read."""
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if line.startswith(f"phase {name} "):
            return seen
    raise AssertionError(f"driver exited before phase {name!r}: {seen}")


def test_second_run_waits_for_the_first_then_both_give_the_clean_dataset(tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "sample")
    with LoopbackServer(_slow(sample)) as server:
        first = _start(driver_args(sample, tmp_path / "shared", server.proxy_url, extra=("--lock-wait", "60")))
        head = _wait_for_phase(first, "download")  # holds the lock now
        second = _start(driver_args(sample, tmp_path / "shared", server.proxy_url, extra=("--lock-wait", "60")))
        out1, err1 = first.communicate(timeout=120)
        out2, err2 = second.communicate(timeout=120)
        clean = run_driver(driver_args(sample, tmp_path / "clean", server.proxy_url))
    assert (first.returncode, second.returncode, clean.returncode) == (0, 0, 0), err1 + err2 + clean.stderr
    one, two = phase_times(head + out1, clock=1), phase_times(out2, clock=1)
    assert two["parse"] < one["done"] <= two["download"]  # started during the first, worked after it
    out = tmp_path / "shared" / "out"
    assert snapshot(out).same_as(snapshot(tmp_path / "clean" / "out"))
    assert leftovers(out) == []


def test_second_run_gives_up_after_lock_wait_with_a_clear_message(tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "sample")
    with LoopbackServer(_slow(sample)) as server:
        first = _start(driver_args(sample, tmp_path / "shared", server.proxy_url))
        _wait_for_phase(first, "download")
        started = time.monotonic()
        second = run_driver(driver_args(sample, tmp_path / "shared", server.proxy_url, extra=("--lock-wait", "0.5")))
        waited = time.monotonic() - started
        _, err1 = first.communicate(timeout=120)
    out = tmp_path / "shared" / "out"
    assert first.returncode == 0, err1
    assert second.returncode == 1
    assert 0.5 <= waited < 30
    message = second.stderr.strip().splitlines()[-1]
    assert message == (
        f"ingest: another ingest run (pid {first.pid} since {_since(out)}) is writing to {out}: wait for it to "
        "finish, or pass a different --out-dir, or raise ingest.lock_wait_s (waited 0.5 s)"
    )
    assert snapshot(out).faces.num_rows > 0
    assert leftovers(out) == []


def _since(out: Path) -> str:
    return (out / LOCK_FILE).read_text().split(" since ", 1)[1].strip()


HOLD = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid x'); print('held', flush=True); time.sleep(60)"
)


def test_lock_is_free_again_after_its_holder_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(["python3", "-c", HOLD, str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(OutputBusyError, match=r"another ingest run \(pid x\) is writing to"), output_lock(out, 0.2):
            pass
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock, the stale file stays
        holder.wait()
    with output_lock(out, wait_s=0) as path:
        assert path.read_text().startswith(f"pid {os.getpid()} since ")
