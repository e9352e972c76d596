"""Parse-and-partition benchmark: our IMFDB ingest against the naive per-row script.

Both read the same ``IMFDB_final`` tree (the 50-actor set in ../shared, or a generated set
of the same layout when it is absent) and write face crops as Parquet partitioned by size
bucket, in the same run:

* **baseline**: :func:`bench.naive.naive_ingest` (``read_csv`` + ``iterrows`` +
  ``Image.open`` per row + Python lists, one process).
* **ours**: :func:`faces_core.ingest.sources.imfdb.scan_imfdb` then
  :func:`faces_core.ingest.pipeline.run_ingest` without Prefect, with params.yaml's
  settings: every quirk parsed, every file hashed and de-duplicated, every crop decoded and
  validated, rejections logged, the dataset committed atomically. Timed with one process
  per core (the default) and with one process, so the gain that is not parallelism shows.

Figures are faces/s (faces written / wall seconds); the two keep different numbers of
faces (the naive script silently drops the rows pandas cannot parse), so both counts are
given. Each is timed ``repeats`` times, interleaved, and its fastest round counts.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common import (
    IMFDB_SHARED,
    REPO,
    BenchResult,
    Figure,
    Sample,
    impossible_rate,
    interleave,
    measured_call,
)
from bench.naive import naive_ingest
from faces_core.ingest.pipeline import IngestSettings, run_ingest, worker_pool
from faces_core.ingest.sources.imfdb import scan_imfdb
from faces_core.sample.imfdb import write_imfdb_sample
from flows.params import ingest_settings, load_params

NAME = "parse_partition"
TARGET_RATIO = 3.0
BUDGET_S = 120.0
"""The whole 50-actor set must ingest within 2 minutes on the 2-core machine (issue 1)."""


@dataclass(frozen=True, slots=True)
class PartitionBench:
    """Inputs of the benchmark: the IMFDB root, or the size of the generated stand-in."""

    root: Path | None = IMFDB_SHARED
    generated_movies: int = 6
    generated_faces: int = 300
    single_process: bool = True
    repeats: int = 4
    """Round cap: rounds go on until every ratio's spread is under 10 % (at least 2); the
    median round counts."""

    @classmethod
    def tiny(cls) -> PartitionBench:
        return cls(root=None, generated_movies=1, generated_faces=20, single_process=False, repeats=1)


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the pool's workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_settings(work: Path, **changes: Any) -> IngestSettings:
    """params.yaml's ingest settings with outputs under ``work``."""
    settings = ingest_settings(load_params(REPO / "params.yaml"))
    return replace(settings, raw_dir=str(work / "raw"), out_dir=str(work / "out"), lock_wait_s=0.0, **changes)


def ours(root: Path, settings: IngestSettings) -> dict[str, Any]:
    """Parse and ingest ``root``; the summary (faces kept, rejections)."""
    with worker_pool(settings.worker_count) as pool:
        parsed = scan_imfdb(root, pool=pool)
    return run_ingest(None, parsed, root, settings)


def _decode_check(paths: list[str], min_side: int) -> int:
    """Read and decode-check crops as our validation does; the number at least ``min_side``."""
    kept = 0
    for path in paths:
        data = Path(path).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as image:
                if min(image.size) < min_side:
                    continue
                image.draft(image.mode, (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
                image.load()
        except (OSError, SyntaxError, ValueError):  # a broken crop is checked (and dropped) too
            continue
        kept += 1
    return kept


def decode_floor(root: Path, workers: int, min_side: int) -> tuple[float, int]:
    """Seconds to only read and decode-check every crop file under ``root`` (no parsing,
    hashing, rows or Parquet), with ``workers`` processes: the least any ingest that checks
    every crop it keeps must spend, so the physical limit of ours. Also the crops kept."""
    paths = sorted(str(p) for p in root.glob("*/*/images/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    chunks = [paths[i : i + 500] for i in range(0, len(paths), 500)]
    start = time.perf_counter()
    with worker_pool(workers) as pool:
        counts = list((pool.map if pool is not None else map)(_decode_check, chunks, [min_side] * len(chunks)))
    return time.perf_counter() - start, sum(counts)


def run(work: Path | None = None, size: PartitionBench | None = None) -> BenchResult:
    """Run the benchmark; ``details["out_dir"]`` is our output (the training benchmark reads it).

    Args:
        work: Scratch folder (a temporary one when None).
        size: Inputs (the shared 50-actor set when present).
    """
    size = size or PartitionBench()
    work = work or Path(tempfile.mkdtemp(prefix="faces-bench-partition-"))
    root = size.root
    generated = root is None or not root.is_dir()
    if root is None or not root.is_dir():
        root = work / "generated" / "IMFDB_final"
        write_imfdb_sample(root, actors=8, movies=size.generated_movies, faces=size.generated_faces)
    variants = [("all cores", 0)] + ([("1 process", 1)] if size.single_process else [])
    runs: dict[str, dict[str, Any]] = {}
    counter = iter(range(10**6))

    def contender(label: str, fn: Any) -> Any:
        def go() -> Sample:
            before = _cpu()
            wall, _, (faces, extra) = measured_call(fn)
            return Sample(wall, _cpu() - before, faces, extra=extra)

        return go

    def naive(same_work: bool) -> Any:
        def fn() -> tuple[int, dict[str, Any]]:
            out = work / f"naive{'-same' if same_work else ''}-{next(counter)}"
            faces = naive_ingest(root, out, same_work=same_work)
            return faces, {"out": str(out)}

        return fn

    def ours_variant(label: str, workers: int) -> Any:
        def fn() -> tuple[int, dict[str, Any]]:
            settings = bench_settings(work / f"ours-{workers}", workers=workers)
            summary = ours(root, settings)
            runs[label] = {"workers": settings.worker_count, "out_dir": settings.out_dir}
            return summary["faces"], {"rejections": summary["rejections"], "workers": settings.worker_count}

        return fn

    contenders = {"ours": contender("ours", ours_variant("all cores", 0))}
    if size.single_process:
        contenders["ours, 1 process"] = contender("1", ours_variant("1 process", 1))
    contenders["naive"] = contender("naive", naive(False))
    contenders["same work"] = contender("same", naive(True))
    rounds = interleave(contenders, "ours", min_rounds=min(2, size.repeats), max_rounds=size.repeats)
    edge = bench_settings(work / "floor").partition.bucket_edges[0]
    floors = {
        label: min(decode_floor(root, runs[label]["workers"], edge) for _ in range(min(2, size.repeats)))
        for label, _ in variants
    }
    naive_rate, same_rate = rounds.median_rate("naive"), rounds.median_rate("same work")
    naive_mid = rounds.median_sample("naive")
    result = BenchResult(NAME, f"Parse and partition: IMFDB {'generated' if generated else '50-actor set'}")
    for label, key in (("all cores", "ours"), ("1 process", "ours, 1 process")):
        if key not in rounds.samples:
            continue
        mid = rounds.median_sample(key)
        rate = rounds.median_rate(key)
        runs[label].update(
            {
                "seconds": mid.wall_s,
                "cpu_s": mid.cpu_s,
                "faces": mid.items,
                "rejections": mid.extra["rejections"],
                "rate": rate,
                "all_seconds": [s.wall_s for s in rounds.samples[key]],
            }
        )
        limit = floors[label][1] / floors[label][0]
        for base, base_rate, name in (
            ("naive", naive_rate, "pandas iterrows + Image.open per row, full decode"),
            ("same work", same_rate, "the same script decoding as ours does (header, 1/8 draft)"),
        ):
            gating = label == "all cores" and base == "naive"
            speedup = rate / base_rate if base_rate else float("inf")
            if key == "ours":
                speedup = rounds.median_ratio(base)
            result.figures.append(
                Figure(
                    measure=f"ours, {label} ({mid.extra['workers']} process{'es' if mid.extra['workers'] > 1 else ''}) "
                    f"vs {base}",
                    ours=rate,
                    unit="faces/s",
                    baseline=base_rate,
                    baseline_name=name,
                    ratio=speedup,
                    limit=limit,
                    target=f">= {TARGET_RATIO:g}x" if gating else "",
                    met=speedup >= TARGET_RATIO if gating else None,
                    failed=impossible_rate(rate, limit, slack=0.1) if gating else "",
                    note=(
                        f"ours kept {mid.items:,} faces and logged {mid.extra['rejections']:,} rejections in "
                        f"{mid.wall_s:.1f} s ({mid.cpu_s:.1f} CPU s); {base} wrote "
                        f"{rounds.median_sample(base).items:,} in {rounds.median_sample(base).wall_s:.1f} s "
                        f"({rounds.median_sample(base).cpu_s:.1f} CPU s)"
                        + (f"; ratio spread {rounds.spread(base):.0%}" if key == "ours" else "")
                    ),
                )
            )
    if not generated:
        whole = runs["all cores"]["seconds"]
        result.figures.append(
            Figure(
                "ours, all cores: wall time for the whole set",
                whole,
                "s",
                target=f"< {BUDGET_S:g} s",
                met=whole < BUDGET_S,
                note="without Prefect; the budget holds on the 2-core machine",
            )
        )
    result.details = {
        "root": str(root),
        "generated": generated,
        "rounds": rounds.to_json(),
        "naive": {"seconds": naive_mid.wall_s, "faces": naive_mid.items, "rate": naive_rate},
        "same_work": {"rate": same_rate},
        "decode_floor": {label: {"seconds": f[0], "crops": f[1]} for label, f in floors.items()},
        "ours": runs,
        "out_dir": runs["all cores"]["out_dir"],
    }
    result.notes.append(f"{rounds.describe()}; the median round counts.")
    single = runs.get("1 process")
    if single is not None and runs["all cores"]["seconds"] > single["seconds"]:
        result.notes.append(
            f"One process per core was slower than one process (load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores): with the cores busy with other jobs the pool gets no more CPU than one "
            "process, and forking workers and pickling shards cost CPU of their own."
        )
    result.notes.append(
        "Physical limit: crops/s when the same processes only read every crop file and decode-check the "
        "ones they keep (header only for those under the smallest bucket), with no parsing, hashing, rows "
        "or Parquet: the work any ingest that validates every crop cannot skip. Ours reaches the share "
        "shown; the rest is parsing the txt files, hashing for duplicates, building rows and writing and "
        "committing Parquet."
    )
    result.notes.append(
        "Both sides decode every crop they keep, so a broken one is noticed: the naive script in full "
        "(convert('RGB')); ours at 1/8 scale where the crop is stored as its own bytes (libjpeg still reads "
        "every entropy-coded block, so truncation is caught as in a full decode) and in full where a crop "
        "is re-encoded. Crops under the smallest bucket (a third of the set) the naive script decodes and "
        "drops; ours drops them from the header. Ours also parses every quirk, hashes and de-duplicates every "
        "file, logs every rejection and commits the dataset atomically; it parses, hashes and partitions in "
        "one process per core."
    )
    return result
