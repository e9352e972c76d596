"""Helpers shared by the fault tests: a small sample, the ingest driver, dataset snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from faces_core.errors import read_errors
from faces_core.sample.imfdb import write_imfdb_sample
from faces_core.sample.tcs import TcsSample, write_tcs_sample
from faces_core.storage import ERRORS_FILE, FACES_DIR, LOCK_FILE, SUMMARY_FILE, read_faces
from faces_core.testing import Route
from tests.conftest import REPO

DRIVER = "tests.reliability.ingest_driver"
FINAL_NAMES = {FACES_DIR, ERRORS_FILE, SUMMARY_FILE, LOCK_FILE}
"""Everything a finished run leaves in out_dir: no staging, journal or old dataset."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Both sources of the bundled sample, with image routes slowed so downloads take time."""

    tcs: TcsSample
    imfdb_root: Path

    @property
    def routes(self) -> dict[str, Route]:
        return self.tcs.routes


def write_sample(root: Path) -> Sample:
    """TCS and IMFDB samples; every image answers after >= 50 ms (slow route: 0.3 s)."""
    tcs = write_tcs_sample(root / "tcs", slow_delay=0.3)
    for route in tcs.routes.values():
        route.delay = max(route.delay, 0.05)
    imfdb = write_imfdb_sample(root / "imfdb" / "IMFDB_final")
    return Sample(tcs=tcs, imfdb_root=imfdb.root)


def driver_args(sample: Sample, work: Path, proxy: str, *, tcs: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    """Command line of the Prefect-free ingest driver writing into ``work/out`` and ``work/raw``."""
    return [
        sys.executable,
        "-m",
        DRIVER,
        "--tcs",
        str(sample.tcs.jsonl) if tcs else "",
        "--imfdb-root",
        str(sample.imfdb_root),
        "--out-dir",
        str(work / "out"),
        "--raw-dir",
        str(work / "raw"),
        "--proxy",
        proxy,
        *extra,
    ]


def run_driver(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the driver to completion from the repository root."""
    return subprocess.run(args, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a user can read from an output directory: faces, error log rows and summary."""

    faces: pa.Table
    errors: list[tuple[str, str, str, str, str]]
    summary: dict[str, Any]

    def same_as(self, other: Snapshot) -> bool:
        return self.faces.equals(other.faces) and self.errors == other.errors and self.summary == other.summary


def snapshot(out: Path, work: Path | None = None) -> Snapshot:
    """Read the dataset, sorted by face id (crop bytes included), and the error log sorted.

    Args:
        out: Output directory.
        work: Directory of this run's stores; error messages that name a stored file read
            ``<work>/...`` instead, so runs in different directories compare equal.
    """
    faces = read_faces(out).to_table()
    faces = faces.select(sorted(faces.column_names)).sort_by("face_id")
    base = str(work if work is not None else out.parent)
    errors = sorted(
        (e.source, e.item, e.stage, str(e.reason), e.message.replace(base, "<work>"))
        for e in read_errors(out / ERRORS_FILE)
    )
    return Snapshot(faces, errors, json.loads((out / SUMMARY_FILE).read_text()))


def leftovers(out: Path) -> list[str]:
    """Names in ``out`` besides the final outputs and the lock file (staging, journal, old)."""
    return sorted(p.name for p in out.iterdir() if p.name not in FINAL_NAMES)


def stored_images(raw: Path) -> list[str]:
    """Content-addressed image files of a store (not the manifest, not partial downloads)."""
    return sorted(p.name for p in raw.glob("images/??/*") if p.is_file())


def phase_times(stdout: str, clock: int = 0) -> dict[str, float]:
    """``phase <name> <since start> <unix time>`` lines of the driver -> name: time.

    Args:
        stdout: The driver's output.
        clock: 0 for seconds since the driver started, 1 for unix time.
    """
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "phase":
            found[parts[1]] = float(parts[2 + clock])
    return found
