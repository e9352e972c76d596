"""Scaling benchmark: ingest time and peak memory at 1x, 2x, 4x and 8x a generated dataset.

Each size is a generated ``IMFDB_final`` tree (:func:`faces_core.sample.imfdb.write_imfdb_sample`,
every format quirk included) with ``k`` times the movies of the 1x tree. Each ingest runs in
a fresh process (``python -m bench.scaling ROOT OUT``: parse, hash, partition with one
process per core, commit; no Prefect) while this process samples the resident memory of
that process and all its workers together (:class:`bench.common.PeakTreeRss`).

Reported: wall time per size and the exponent ``b`` of a least-squares fit
``time = a * size**b`` (1 = linear), and the peak tree RSS per size with the ratio 8x/1x:
a pipeline that streams keeps it flat (target under 1.5).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, BenchResult, Figure, PeakTreeRss
from faces_core.sample.imfdb import write_imfdb_sample

NAME = "scaling"
TARGET_MEMORY_RATIO = 1.5
TARGET_EXPONENT = 1.2
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ScalingBench:
    """Sizes: the 1x tree has 8 actors x ``movies`` x ``faces``; the others multiply movies."""

    scales: tuple[int, ...] = (1, 2, 4, 8)
    movies: int = 2
    faces: int = 100
    repeats: int = 2
    """Ingests per size: the fastest time and the highest peak memory count."""

    @classmethod
    def tiny(cls) -> ScalingBench:
        return cls(scales=(1, 2), movies=1, faces=8, repeats=1)


def fit_exponent(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of ``log(value)`` against ``log(size)``: ``value ~ size**slope``."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0


def measure(root: Path, out: Path) -> dict[str, Any]:
    """Ingest ``root`` into ``out`` in a child process; its time, faces and peak tree RSS."""
    command = [sys.executable, "-m", "bench.scaling", str(root), str(out)]
    start = time.perf_counter()
    with (
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as child,
        PeakTreeRss(child.pid) as rss,
    ):
        stdout, _ = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"ingest of {root} failed with exit status {child.returncode}; its output is above")
    report = json.loads(stdout.strip().splitlines()[-1])
    return {**report, "process_seconds": wall, "peak_rss_mib": rss.peak / MIB, "rss_samples": rss.samples}


def run(work: Path | None = None, size: ScalingBench | None = None) -> BenchResult:
    """Generate each size, ingest it in a child process, and fit time and memory growth.

    Args:
        work: Scratch folder (a temporary one when None).
        size: Scales and 1x size.
    """
    size = size or ScalingBench()
    work = work or Path(tempfile.mkdtemp(prefix="faces-bench-scaling-"))
    runs: dict[int, dict[str, Any]] = {}
    for scale in size.scales:
        root = work / f"x{scale}" / "IMFDB_final"
        sample = write_imfdb_sample(root, actors=8, movies=size.movies * scale, faces=size.faces)
        trials = [measure(root, work / f"x{scale}" / "out") for _ in range(size.repeats)]
        fastest = min(trials, key=lambda t: t["seconds"])
        runs[scale] = {
            "images": sample.images,
            **fastest,
            "peak_rss_mib": max(t["peak_rss_mib"] for t in trials),
            "all_seconds": [t["seconds"] for t in trials],
            "all_peak_rss_mib": [t["peak_rss_mib"] for t in trials],
        }
    first, last = runs[size.scales[0]], runs[size.scales[-1]]
    images = [float(r["images"]) for r in runs.values()]
    exponent = fit_exponent(images, [r["seconds"] for r in runs.values()])
    memory_exponent = fit_exponent(images, [r["peak_rss_mib"] for r in runs.values()])
    memory_ratio = last["peak_rss_mib"] / first["peak_rss_mib"]
    span = f"{size.scales[-1]}x/{size.scales[0]}x"
    result = BenchResult(NAME, f"Scaling: ingest of {first['images']:,} to {last['images']:,} generated IMFDB images")
    for scale, r in runs.items():
        result.figures.append(
            Figure(
                measure=f"{scale}x: {r['images']:,} images",
                ours=r["faces"] / r["seconds"],
                unit="faces/s",
                note=f"{r['seconds']:.1f} s, peak RSS of the process tree {r['peak_rss_mib']:.0f} MiB",
            )
        )
    result.figures += [
        Figure(
            measure="time exponent b (time ~ size^b)",
            ours=exponent,
            unit="",
            target=f"about 1 (< {TARGET_EXPONENT:g})",
            met=exponent < TARGET_EXPONENT,
            note=f"{first['seconds']:.1f} s at {size.scales[0]}x, {last['seconds']:.1f} s at {size.scales[-1]}x",
        ),
        Figure(
            measure=f"peak memory ratio {span}",
            ours=memory_ratio,
            unit="x",
            target=f"< {TARGET_MEMORY_RATIO:g}",
            met=memory_ratio < TARGET_MEMORY_RATIO,
            note=(
                f"{first['peak_rss_mib']:.0f} MiB -> {last['peak_rss_mib']:.0f} MiB "
                f"(memory exponent {memory_exponent:.2f})"
            ),
        ),
    ]
    result.details = {
        "runs": {str(k): v for k, v in runs.items()},
        "time_exponent": exponent,
        "memory_exponent": memory_exponent,
        "memory_ratio": memory_ratio,
    }
    if size.repeats > 1:
        result.notes.append(
            f"Each size was ingested {size.repeats} times: its fastest time and its highest peak memory count. "
            "Peak memory is the sum of the RSS of the ingest process and its workers: pages the forked workers "
            "share with the parent count once per process, so it overstates what the tree holds."
        )
    return result


def _child(root: Path, out: Path) -> int:
    """Child process: ingest ``root`` with params.yaml's settings into ``out``; print a JSON line."""
    from bench.partition import bench_settings, ours

    start = time.perf_counter()
    summary = ours(root, bench_settings(out))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "faces": summary["faces"], "rejections": summary["rejections"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(Path(sys.argv[1]), Path(sys.argv[2])))
