"""SIGKILL an ingest at seeded random moments of every phase, then run it again.

Each trial starts from a previous dataset (an IMFDB-only run), kills the Prefect-free
driver (``tests/reliability/ingest_driver.py``) a seeded random delay after the phase it
targets began, and checks two things: the killed state, once recovered, is exactly the
previous dataset or exactly the new one (never a mix); and after a re-run the dataset
equals a clean run's (face ids, crop bytes, error log rows, summary), with no staging,
journal or old dataset left behind and the same images in the store.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from faces_core.storage import output_lock, recover
from faces_core.testing import LoopbackServer
from tests.conftest import REPO
from tests.reliability.faults import (
    Sample,
    driver_args,
    leftovers,
    phase_times,
    run_driver,
    snapshot,
    stored_images,
    write_sample,
)

SEED = 20240607
TARGETS = {"parse": 4, "download": 4, "hash": 2, "partition": 5, "write": 3, "commit": 6}
"""Trials per targeted phase (24 in all); commit/swap lasts milliseconds, so it gets more."""
PHASES = ("parse", "download", "hash", "partition", "write", "commit", "done")


def _durations(stdout: str) -> dict[str, float]:
    starts = phase_times(stdout)
    return {a: starts[b] - starts[a] for a, b in itertools.pairwise(PHASES)}


def _kill_in_phase(args: list[str], target: str, delay: float) -> tuple[str, int]:
    """Start the driver, SIGKILL it ``delay`` s after ``target`` began; return the phase hit.

    The phase hit is the last one the driver announced before it died (``done``: the kill
    came after the run had finished).
    """
    proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith(f"phase {target} "):
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            raise AssertionError(f"the driver never reached phase {target!r} (exit {proc.wait()})")
        rest = proc.stdout.read()
    finally:
        proc.kill()
        returncode = proc.wait(timeout=30)
    announced = [p for p in phase_times(line + rest)]
    return announced[-1], returncode


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_clean_run(tmp_path: Path) -> None:
    sample: Sample = write_sample(tmp_path / "sample")
    rng = random.Random(SEED)
    with LoopbackServer(sample.routes) as server:
        clean = run_driver(driver_args(sample, tmp_path / "clean", server.proxy_url))
        assert clean.returncode == 0, clean.stderr
        previous = run_driver(driver_args(sample, tmp_path / "previous", server.proxy_url, tcs=False))
        assert previous.returncode == 0, previous.stderr
    durations = _durations(clean.stdout)
    expected = snapshot(tmp_path / "clean" / "out")
    before = snapshot(tmp_path / "previous" / "out")
    assert expected.faces.num_rows > before.faces.num_rows > 0
    assert len(set(expected.faces["face_id"].to_pylist())) == expected.faces.num_rows
    assert expected.errors and len(set(expected.errors)) == len(expected.errors)

    hits: Counter[str] = Counter()
    states: Counter[str] = Counter()
    plan = [target for target, n in TARGETS.items() for _ in range(n)]
    for trial, target in enumerate(plan):
        delay = rng.uniform(0.0, durations[target])
        work = tmp_path / f"trial-{trial:02d}"
        shutil.copytree(tmp_path / "previous" / "out", work / "out")
        with LoopbackServer(sample.routes) as server:  # fresh: its flaky routes fail again
            args = driver_args(sample, work, server.proxy_url)
            hit, returncode = _kill_in_phase(args, target, delay)
            hits[hit] += 1
            context = f"trial {trial}: target {target}, delay {delay:.4f} s, hit {hit}"
            if hit != "done":
                assert returncode == -signal.SIGKILL, context

            # What a reader finds once the kill's leftovers are settled: all old or all new.
            settled = tmp_path / f"settled-{trial:02d}"
            shutil.copytree(work / "out", settled)
            with output_lock(settled):
                recover(settled)
            state = snapshot(settled, work)
            assert state.same_as(before) or state.same_as(expected), context
            states["new" if state.same_as(expected) else "previous"] += 1
            assert leftovers(settled) == [], context

            rerun = run_driver(args)
            assert rerun.returncode == 0, f"{context}\n{rerun.stderr}"
        after = snapshot(work / "out")
        assert after.same_as(expected), context
        assert len(set(after.faces["face_id"].to_pylist())) == after.faces.num_rows, context
        assert leftovers(work / "out") == [], context
        assert stored_images(work / "raw") == stored_images(tmp_path / "clean" / "raw"), context
        shutil.rmtree(work)
        shutil.rmtree(settled)

    print(f"\nkill trials: {len(plan)}; phases hit: {dict(hits)}; state after kill: {dict(states)}")
    assert sum(hits.values()) == len(plan)
    # Phases of milliseconds (parse, commit) are not hit every time on a loaded machine.
    assert hits["download"] >= 1 and hits["partition"] >= 1, dict(hits)
    assert len(set(hits) - {"done"}) >= 4, dict(hits)
