"""Inputs that never end or never arrive: bounded memory, a deadline, no hang on special files.

Defects: `--tcs http://host/endless` read the body with `response.content` (19 GB in 36 s,
then the OOM killer); the same URL dripping kept the run in parse for ever; a FIFO as the TCS
file blocked `open()` for ever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from faces_core.ingest.sources.tcs import TcsInputError, read_tcs
from faces_core.testing import LoopbackServer, Route
from tests.conftest import REPO

LINE = (
    b'{"content": "http://img.invalid/a.jpg", "annotation": [{"label": ["G_Male"], "points": '
    b'[{"x": 0.1, "y": 0.1}, {"x": 0.6, "y": 0.6}], "imageWidth": 400, "imageHeight": 400}]}\n'
)

pytestmark = pytest.mark.usefixtures("no_env_proxy")


def test_an_endless_tcs_url_is_cut_at_the_byte_cap() -> None:
    with LoopbackServer({"/endless": Route(body=LINE * 1000, content_type="application/json", endless=True)}) as s:
        started = time.monotonic()
        with pytest.raises(TcsInputError, match=r"larger than 5000000 bytes"):
            read_tcs(s.url("/endless"), timeout=5, max_bytes=5_000_000)
    assert time.monotonic() - started < 30


def test_a_dripping_tcs_url_is_cut_at_the_deadline() -> None:
    drip = Route(body=LINE * 50, content_type="application/json", chunk_size=20, chunk_delay=0.2)
    with LoopbackServer({"/drip": drip}) as server:
        started = time.monotonic()
        with pytest.raises(TcsInputError, match=r"did not arrive within 2 s"):
            read_tcs(server.url("/drip"), timeout=5, deadline_s=2.0)
    assert time.monotonic() - started < 6  # the deadline, plus one drip, not the whole body


def test_a_tcs_url_within_the_limits_is_parsed_from_its_stream() -> None:
    with LoopbackServer({"/ok": Route(body=LINE * 3, content_type="application/json", chunk_size=50)}) as server:
        result = read_tcs(server.url("/ok"), timeout=5, max_bytes=len(LINE) * 3)
    assert len(result.records) == 1 and len(result.rejections) == 2  # the same face twice: duplicate_row


@pytest.mark.parametrize("kind", ["fifo", "directory", "too-large"])
def test_a_tcs_path_that_is_no_regular_file_or_too_large_is_refused_unopened(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "faces.jsonl"
    if kind == "fifo":
        os.mkfifo(path)  # open() would wait for a writer for ever
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(LINE * 10)
    started = time.monotonic()
    with pytest.raises(TcsInputError, match="not a regular file" if kind != "too-large" else "more than 100"):
        read_tcs(path, max_bytes=100)
    assert time.monotonic() - started < 2


@pytest.mark.slow
def test_an_endless_url_stays_under_a_memory_limit(tmp_path: Path) -> None:
    """The whole default cap (1 GiB) of an endless body, read with a flat peak memory."""
    with LoopbackServer({"/endless": Route(body=LINE * 5000, content_type="application/json", endless=True)}) as s:
        code = textwrap.dedent(
            f"""
            import sys
            from faces_core.ingest.sources.tcs import TcsInputError, read_tcs
            try:
                read_tcs({s.url("/endless")!r}, timeout=5)
            except TcsInputError as exc:
                print("refused:", exc)
            # VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across fork and exec
            print("peak_mb", next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024)
            """
        )
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "larger than 1073741824 bytes" in proc.stdout
    peak_mb = float(proc.stdout.split("peak_mb")[-1])
    assert peak_mb < 500, peak_mb  # the body went to a temporary file, not to memory
