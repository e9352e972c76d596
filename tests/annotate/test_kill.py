"""SIGKILL an annotate run at seeded random moments, then run it again: the result equals one clean run.

The driver (``tests/annotate/annotate_driver.py``, no Prefect) announces each committed
shard; each trial kills it a random delay after a random shard committed (so kills land
while decoding, detecting and writing parts), then re-runs. The current annotations must
equal a clean run's (same faces, boxes within float noise of batching), every face row on
disk must be there exactly once, and no temporary or uncommitted part may remain.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from faces_core.annotate import store
from faces_core.sample.faces import AnnotateSample, face_box, faces_image
from tests.conftest import REPO

SEED = 20250101
TRIALS = 20  # issue 7: at least 20 kill trials per stage
INBOX_TRIALS = 6  # issue 17: kills while an inbox file is still being copied in (on top of the 20)


def _driver(source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tests.annotate.annotate_driver", str(source), str(out)]


def _kill_after_commit(args: list[str], shard: int, delay: float) -> str:
    """Start the driver, SIGKILL it ``delay`` s after shard ``shard`` committed; return its last line."""
    proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    last = ""
    try:
        for line in proc.stdout:
            last = line.strip()
            if line.startswith(f"shard {shard} committed") or line.startswith("done"):
                if delay:
                    import time

                    time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    return last


def _faces(out: Path) -> dict[tuple[str, int | None, int], tuple[float, ...]]:
    rows = store.read_annotations(out).to_pylist()
    keys = [(Path(r["file"]).name, r["frame_index"], r["face"]) for r in rows]
    assert len(keys) == len(set(keys)), "a face appears twice"
    return {k: (r["x0"], r["y0"], r["x1"], r["y1"], r["confidence"]) for k, r in zip(keys, rows, strict=True)}


def _assert_same_as_clean(out: Path, clean: dict[tuple[str, int | None, int], tuple[float, ...]], trial: str) -> None:
    """The current annotations equal the clean run's, and every face row on disk is there once
    (no file annotated by both runs)."""
    again = _faces(out)
    assert again.keys() == clean.keys(), trial
    for key, box in clean.items():
        assert again[key] == pytest.approx(box, abs=1e-2), key
    raw = store._read(out, store.ANNOTATIONS_DIR, store.ANNOTATION_SCHEMA).to_pylist()
    counts = Counter((r["file"], r["frame_index"], r["face"]) for r in raw)
    assert len(raw) == len(clean) and max(counts.values()) == 1, trial


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".tmp-*"))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_one_clean_run(sample: AnnotateSample, tmp_path: Path) -> None:
    clean_out = tmp_path / "clean"
    done = subprocess.run(_driver(sample.root, clean_out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    clean = _faces(clean_out)
    assert len(clean) == sample.faces
    rng = random.Random(SEED)
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}"
        shard, delay = rng.randrange(0, 3), rng.uniform(0.0, 1.5)
        _kill_after_commit(_driver(sample.root, out), shard, delay)
        rerun = subprocess.run(_driver(sample.root, out), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        _assert_same_as_clean(out, clean, f"trial {trial} (shard {shard}, +{delay:.2f} s)")
        files = store.read_files(out).column("file").to_pylist()
        assert sorted(files) == sorted(str(f.path) for f in sample.files)
        assert _leftovers(out) == []
        parts = store.parts(out)
        assert set(parts[store.ANNOTATIONS_DIR]) <= set(parts[store.FILES_DIR])


def _write_slowly(path: Path, data: bytes, stop: threading.Event) -> None:
    """A copy in progress: the file grows by a few bytes every 50 ms until ``stop`` (then completes)."""
    with path.open("wb") as fh:
        for start in range(0, len(data), 512):
            if stop.is_set():
                break
            fh.write(data[start : start + 512])
            fh.flush()
            time.sleep(0.05)
        fh.write(data[fh.tell() :])


@pytest.mark.slow
def test_sigkill_while_an_inbox_file_is_being_written_then_rerun_equals_one_clean_run(
    sample: AnnotateSample, tmp_path: Path
) -> None:
    """The inbox case: a photo is still being copied in when the run is killed. After the copy
    ends and the inbox runs again, the annotations equal one clean run over the final folder."""
    late = faces_image(480, 360, [face_box(240, 180, 120)], random.Random(5))
    buffer = io.BytesIO()
    late.save(buffer, format="PNG")
    late_bytes = buffer.getvalue()
    final = tmp_path / "final"
    shutil.copytree(sample.root, final)
    (final / "late.png").write_bytes(late_bytes)
    clean_out = tmp_path / "clean"
    done = subprocess.run(_driver(final, clean_out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    clean = _faces(clean_out)
    assert len(clean) == sample.faces + 1
    rng = random.Random(SEED + 1)
    for trial in range(INBOX_TRIALS):
        inbox, out = tmp_path / f"inbox{trial}", tmp_path / f"out{trial}"
        shutil.copytree(sample.root, inbox)
        stop = threading.Event()
        writer = threading.Thread(target=_write_slowly, args=(inbox / "late.png", late_bytes, stop))
        writer.start()
        try:
            shard, delay = rng.randrange(0, 3), rng.uniform(0.0, 1.0)
            _kill_after_commit([*_driver(inbox, out), "--inbox"], shard, delay)
        finally:
            stop.set()
            writer.join()
        assert (inbox / "late.png").read_bytes() == late_bytes
        for _ in range(3):  # the copy has ended: within a run or two the late file is settled too
            rerun = subprocess.run(
                [*_driver(inbox, out), "--inbox"], cwd=REPO, capture_output=True, text=True, timeout=300
            )
            assert rerun.returncode == 0, rerun.stderr[-3000:]
            if rerun.stdout.strip().endswith("arriving 0"):
                break
        _assert_same_as_clean(out, clean, f"inbox trial {trial} (shard {shard}, +{delay:.2f} s)")
        assert _leftovers(out) == []
