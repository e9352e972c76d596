"""A read-only or full output directory: a clear error, and the previous outputs intact.

Tests run as root, where file modes do not stop writes, so the directory is made
read-only with a read-only bind mount of itself, and full with a small tmpfs mounted on
it. Both need mount privileges (root with CAP_SYS_ADMIN, as here and in CI); without them
the tests skip and say so.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from faces_core.testing import LoopbackServer
from tests.reliability.faults import Sample, driver_args, leftovers, run_driver, snapshot, write_sample

pytestmark = pytest.mark.slow


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}): needs root with CAP_SYS_ADMIN")


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=True)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` as a read-only bind mount of itself (EROFS on every write, root included)."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield
    finally:
        _umount(path)


@contextmanager
def small_tmpfs(path: Path, size_kib: int) -> Iterator[None]:
    """A tmpfs of ``size_kib`` KiB on ``path`` (ENOSPC once it is full)."""
    _mount("-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path))
    try:
        yield
    finally:
        _umount(path)


def _du_kib(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) // 1024


def _previous(tmp_path: Path, sample: Sample, proxy: str) -> Path:
    """An IMFDB-only dataset written by an earlier run (the outputs that must survive)."""
    done = run_driver(driver_args(sample, tmp_path / "previous", proxy, tcs=False))
    assert done.returncode == 0, done.stderr
    return tmp_path / "previous" / "out"


def test_read_only_output_dir_is_a_clear_error_and_keeps_the_previous_dataset(tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "sample")
    with LoopbackServer(sample.routes) as server:
        previous = _previous(tmp_path, sample, server.proxy_url)
        out = tmp_path / "run" / "out"
        shutil.copytree(previous, out)
        before = snapshot(out, tmp_path / "previous")
        with read_only(out):
            done = run_driver(driver_args(sample, tmp_path / "run", server.proxy_url))
            assert done.returncode == 1
            assert done.stderr.strip().splitlines()[-1] == (
                f"ingest: cannot write to output directory {out} (Read-only file system: {out}/.ingest.lock): "
                "make it writable or point ingest.out_dir in params.yaml (or --out-dir) at a writable directory; "
                "the previous dataset is unchanged"
            )
            assert "Traceback" not in done.stderr
            assert snapshot(out, tmp_path / "previous").same_as(before)
    assert leftovers(out) == []
    assert not (tmp_path / "run" / "raw").exists()  # refused before any download


def test_full_output_dir_is_a_clear_error_and_keeps_the_previous_dataset(tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "sample")
    with LoopbackServer(sample.routes) as server:
        previous = _previous(tmp_path, sample, server.proxy_url)
        clean = run_driver(driver_args(sample, tmp_path / "clean", server.proxy_url))
        assert clean.returncode == 0, clean.stderr
        out = tmp_path / "run" / "out"
        out.mkdir(parents=True)
        # Room for the previous dataset plus a third of the new one: staging runs out of space.
        size = _du_kib(previous) + _du_kib(tmp_path / "clean" / "out") // 3
        with small_tmpfs(out, size):
            shutil.copytree(previous, out, dirs_exist_ok=True)
            before = snapshot(out, tmp_path / "previous")
            done = run_driver(driver_args(sample, tmp_path / "run", server.proxy_url))
            assert done.returncode == 1, done.stdout
            last = done.stderr.strip().splitlines()[-1]
            assert last.startswith(f"ingest: output directory {out} is full (No space left on device")
            assert last.endswith(
                "free some space there or point ingest.out_dir in params.yaml (or --out-dir) at a filesystem "
                "with room; the previous dataset is unchanged"
            )
            assert "Traceback" not in done.stderr
            assert snapshot(out, tmp_path / "previous").same_as(before)
            assert leftovers(out) == []  # the failed run's staging is gone: its space is free again
            # Once there is room, the same output directory takes a run.
            shutil.rmtree(out / "faces")
            assert run_driver(driver_args(sample, tmp_path / "run", server.proxy_url)).returncode == 0
            assert snapshot(out, tmp_path / "run").same_as(snapshot(tmp_path / "clean" / "out"))
