"""Run every benchmark: ``python -m bench`` (``make bench``).

Writes ``bench/results/<name>.json`` per benchmark and ``bench/RESULTS.md``, prints each
figure, and exits 1 when a target measured in this run is missed (or a benchmark fails),
so a regression shows. Figures recorded on another machine (the lent GPU) are shown but do
not decide the exit status.

    python -m bench                       # all, full size (about 20 minutes on 2 cores)
    python -m bench --only download,scaling
    python -m bench.million               # the million-URL simulation (bench/recorded/million.json, shown by the above)
    python -m bench --tiny --out-dir /tmp/b --markdown /tmp/b/RESULTS.md   # seconds each

Adding a benchmark: a module ``bench/<name>.py`` with ``run(work, size) -> BenchResult``
and a sizes dataclass with a ``tiny()`` classmethod, plus one line in :data:`BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import annotate, download, million, partition, scaling, train
from bench.common import BENCH_DIR, RESULTS_DIR, BenchResult, write_json
from bench.report import machine_info, number, render


@dataclass(frozen=True, slots=True)
class Benchmark:
    """One entry of ``python -m bench``.

    Attributes:
        name: Name on the command line and of ``bench/results/<name>.json``.
        run: ``run(work=..., size=..., **inputs) -> BenchResult``.
        sizes: Its sizes dataclass; ``sizes.tiny()`` is used with ``--tiny``.
        inputs: Extra keyword arguments taken from earlier results (the training benchmark
            trains on the parse-and-partition benchmark's output).
    """

    name: str
    run: Callable[..., BenchResult]
    sizes: Any
    inputs: Callable[[dict[str, BenchResult]], dict[str, Any]] | None = None


def _train_inputs(done: dict[str, BenchResult]) -> dict[str, Any]:
    ingested = done.get(partition.NAME)
    return {"data": Path(ingested.details["out_dir"])} if ingested is not None else {}


BENCHMARKS: list[Benchmark] = [
    Benchmark(download.NAME, download.run, download.DownloadBench),
    Benchmark(partition.NAME, partition.run, partition.PartitionBench),
    Benchmark(scaling.NAME, scaling.run, scaling.ScalingBench),
    Benchmark(train.NAME, train.run, train.TrainBench, _train_inputs),
    Benchmark(annotate.NAME, annotate.run, annotate.AnnotateBench),
    Benchmark(million.NAME, million.run, million.MillionBench),
]


def print_result(result: BenchResult) -> None:
    """Figures of one benchmark on stdout, one line each."""
    print(f"\n== {result.title} ({result.seconds:.0f} s)")
    for f in result.figures:
        parts = [f"{f.measure}: {number(f.ours, f.unit)}"]
        if f.ratio is not None:
            parts.append(f"{number(f.ratio, 'x')} vs {f.baseline_name} ({number(f.baseline, f.unit)})")
        if f.limit is not None and f.share_of_limit is not None:
            parts.append(f"{f.share_of_limit:.0%} of the limit {number(f.limit, f.unit)}")
        if f.failed:
            parts.append(f"FAILED MEASUREMENT: {f.failed}")
        elif f.met is not None:
            parts.append(f"target {f.target}: {'met' if f.met else 'MISSED'}")
        if f.machine != "this machine":
            parts.append(f"[recorded on {f.machine}]")
        print("  " + "; ".join(parts))
    for note in result.notes:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    names = [b.name for b in BENCHMARKS]
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(names)}")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (smoke test; targets are not meaningful)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where <name>.json go")
    parser.add_argument("--markdown", type=Path, default=BENCH_DIR / "RESULTS.md", help="the Markdown table")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    machine = machine_info()
    work = args.work or Path(tempfile.mkdtemp(prefix="faces-bench-"))
    start = time.perf_counter()
    done: dict[str, BenchResult] = {}
    errors: dict[str, str] = {}
    try:
        for bench in BENCHMARKS:
            if bench.name not in chosen:
                continue
            print(f"running {bench.name} ...", flush=True)
            began = time.perf_counter()
            try:
                inputs = bench.inputs(done) if bench.inputs else {}
                size = bench.sizes.tiny() if args.tiny else None
                result = bench.run(work=work / bench.name, size=size, **inputs)
            except Exception:
                errors[bench.name] = traceback.format_exc()
                print(errors[bench.name], file=sys.stderr)
                continue
            result.seconds = time.perf_counter() - began
            done[bench.name] = result
            write_json({"machine": machine, **result.to_json()}, args.out_dir / f"{bench.name}.json")
            print_result(result)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    results = list(done.values())
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(render(results, machine, seconds, errors))
    missed = [f"{r.name}: {f.measure}" for r in results for f in r.figures if f.gating and not f.met]
    print(f"\nwrote {args.markdown} and {args.out_dir}/<name>.json in {seconds / 60:.1f} min")
    for line in missed:
        print(f"MISSED {line}")
    for name in errors:
        print(f"FAILED {name} (traceback above)")
    return 1 if missed or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
