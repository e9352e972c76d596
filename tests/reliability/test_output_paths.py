"""An output or image-store path that cannot be a directory: one line and exit 1, before any work.

`--out-dir` naming an existing file gave a `FileExistsError` traceback; a raw dir that is a
file failed only after the downloads were under way.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from faces_cli.main import main
from faces_core.sample.tcs import write_tcs_sample

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "no_env_proxy")]


def _ingest(tmp_path: Path, out: Path, raw: Path) -> tuple[int, str]:
    sample = write_tcs_sample(tmp_path / "sample", slow_delay=0.2)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            ["ingest", "--tcs", str(sample.jsonl), "--imfdb-root", "", "--out-dir", str(out), "--raw-dir", str(raw)]
        )
    return code, err.getvalue()


@pytest.mark.parametrize("where", ["out-dir", "inside-a-file"])
def test_out_dir_that_is_a_file_is_one_line(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    out = blocker if where == "out-dir" else blocker / "out"
    code, err = _ingest(tmp_path, out, tmp_path / "raw")
    assert code == 1, err
    line = next(line for line in err.splitlines() if line.startswith("faces ingest:"))
    assert "is not a directory" in line and "--out-dir" in line
    assert "Traceback" not in err.split("faces ingest:")[-1]
    assert blocker.read_text() == "not a directory"


def test_raw_dir_that_is_a_file_fails_before_any_download(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_text("not a directory")
    code, err = _ingest(tmp_path, tmp_path / "out", raw)
    assert code == 1, err
    line = next(line for line in err.splitlines() if line.startswith("faces ingest:"))
    assert "cannot store downloaded images" in line and "nothing was downloaded" in line
    assert not (tmp_path / "out" / "faces").exists()


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_raw_dir_read_only_or_full_fails_before_any_download(tmp_path: Path, fault: str) -> None:
    """One line naming the store and the cause, exit 1, no dataset started (mounts: see test_faults_storage)."""
    from tests.reliability.test_faults_storage import read_only, small_tmpfs

    raw = tmp_path / "raw"
    raw.mkdir()
    if fault == "read-only":
        mounted = read_only(raw)
        cause = "Read-only file system"
    else:
        mounted = small_tmpfs(raw, 8)
        cause = "No space left on device"
    with mounted:
        if fault == "full":
            with contextlib.suppress(OSError):
                (raw / "filler").write_bytes(b"\0" * 64 * 1024)  # fills the 8 KiB tmpfs
        code, err = _ingest(tmp_path, tmp_path / "out", raw)
        assert code == 1, err
        line = next(line for line in err.splitlines() if line.startswith("faces ingest:"))
        assert f"cannot store downloaded images in {raw} ({cause}" in line and "nothing was downloaded" in line
        assert "Traceback" not in err.split("faces ingest:")[-1]
        assert not (raw / "images").exists() or not any((raw / "images").iterdir())
    assert not (tmp_path / "out" / "faces").exists()
