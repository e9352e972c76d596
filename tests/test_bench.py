"""Smoke tests: each benchmark runs at a tiny size and reports consistent figures.

The benchmarks themselves stay out of the test suite (``make bench``); these prove each one
still runs end to end, loses nothing and writes what RESULTS.md is built from. Targets are
not asserted at tiny sizes, where they mean nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench import download, partition, scaling, train
from bench.__main__ import main
from bench.common import THIS_MACHINE, BenchResult, Figure, tree_rss
from bench.report import render
from faces_core.annotate.store import read_files
from faces_core.ingest.partition import read_faces

pytestmark = [pytest.mark.bench, pytest.mark.slow]


def test_download_bench_stores_every_image_at_every_concurrency(tmp_path: Path) -> None:
    size = download.DownloadBench.tiny()
    result = download.run(tmp_path, size)
    details = result.details
    assert details["serial"]["ok"] == size.serial_sample
    assert set(details["sweep"]) == {str(c) for c in size.concurrencies}
    for concurrency, run in details["sweep"].items():
        assert (run["stored"], run["rejected"], run["lost"], run["rerun_fetched"]) == (size.images, 0, 0, 0)
        assert run["limit_rate"] == pytest.approx(int(concurrency) / size.latency_s)
    assert details["best_default_concurrency"] in size.concurrencies
    assert [f.target != "" for f in result.figures] == [
        c == details["best_default_concurrency"] for c in size.concurrencies
    ]
    for figure in result.figures:
        assert figure.ratio == pytest.approx(figure.ours / details["serial"]["rate"])
        assert figure.baseline == details["serial"]["rate"]


def test_partition_bench_writes_both_datasets(tmp_path: Path) -> None:
    result = partition.run(tmp_path, partition.PartitionBench.tiny())
    details = result.details
    ours = details["ours"]["all cores"]
    assert details["generated"] is True
    assert read_faces(ours["out_dir"]).count_rows() == ours["faces"] > 0
    assert len(pd.read_parquet(tmp_path / "naive")) == details["naive"]["faces"] > 0
    [figure] = result.figures
    assert figure.ratio == pytest.approx(ours["rate"] / details["naive"]["rate"])
    assert figure.target == ">= 3x" and figure.met == (figure.ratio >= 3)


def test_scaling_bench_measures_each_size_in_its_own_process(tmp_path: Path) -> None:
    size = scaling.ScalingBench.tiny()
    result = scaling.run(tmp_path, size)
    runs = result.details["runs"]
    assert list(runs) == [str(s) for s in size.scales]
    for scale, run in runs.items():
        faces = read_faces(tmp_path / f"x{scale}" / "out" / "out").count_rows()
        assert run["faces"] == faces > 0
        assert run["rss_samples"] >= 1 and run["peak_rss_mib"] > 20  # an interpreter with pyarrow
    assert runs["2"]["images"] > runs["1"]["images"]
    assert result.details["memory_ratio"] == pytest.approx(runs["2"]["peak_rss_mib"] / runs["1"]["peak_rss_mib"])
    annotated = result.details["annotate"]["runs"]
    for scale, run in annotated.items():
        rows = read_files(tmp_path / f"x{scale}" / "annotated-0").num_rows
        assert run["images"] == rows == size.annotate_images * int(scale)
        assert run["peak_rss_mib"] > 100  # torch and the detector
    assert {f.measure for f in result.figures} >= {
        "annotate: time exponent b (time ~ size^b)",
        "annotate: peak memory ratio 2x/1x",
        "ingest: peak memory ratio 2x/1x",
    }


def test_fit_exponent_recovers_powers() -> None:
    assert scaling.fit_exponent([1, 2, 4, 8], [3, 6, 12, 24]) == pytest.approx(1.0)
    assert scaling.fit_exponent([1, 2, 4], [5, 20, 80]) == pytest.approx(2.0)
    assert scaling.fit_exponent([2, 2], [1, 9]) == 0.0


def test_tree_rss_counts_this_process() -> None:
    import os

    assert tree_rss(os.getpid()) > 10 * 2**20


def test_train_bench_reports_cpu_and_recorded_gpu_figures(tmp_path: Path) -> None:
    result = train.run(tmp_path, train.TrainBench.tiny())
    here = result.details["this_machine"]
    assert here["threads"] == 1 and here["batch_size"] == 8
    entry = here["mobilenet_v2"]
    assert entry["model_only"]["fp32"] > 0 and entry["end_to_end"] > 0
    assert entry["loader_to_model"] == pytest.approx(here["loader"]["cpu_decode"] / entry["model_only"]["fp32"])
    recorded = [f for f in result.figures if f.machine == train.RECORDED_GPU_MACHINE]
    ratios = {f.measure.split()[0]: f.met for f in recorded if "loader-to-model" in f.measure}
    assert ratios == {"mobilenet_v2": False, "resnet50": True}  # 1.35 and 1.62 against 1.5
    assert not any(f.gating for f in recorded)
    assert all(f.met is None for f in result.figures if f.machine == THIS_MACHINE)
    assert result.passed


def test_entry_point_writes_json_and_markdown(tmp_path: Path) -> None:
    status = main(["--tiny", "--only", "download", "--out-dir", str(tmp_path), "--markdown", str(tmp_path / "R.md")])
    written = json.loads((tmp_path / "download.json").read_text())
    assert status == (0 if written["passed"] else 1)
    assert written["machine"]["cores"] >= 1 and len(written["figures"]) == 2
    text = (tmp_path / "R.md").read_text()
    assert "## Download: 40 images, 20 ms latency each" in text
    assert sum(line.startswith("| concurrency ") for line in text.splitlines()) == 2  # one row per concurrency
    assert "| download | concurrency 16 (best default) |" in text  # and the one with a target in the headline


def test_missed_target_fails_only_when_measured_here() -> None:
    here = Figure("x", 2.0, "x", target=">= 3", met=False)
    elsewhere = Figure("y", 2.0, "x", target=">= 3", met=False, machine="GPU box")
    assert BenchResult("a", "A", [elsewhere]).passed
    assert not BenchResult("b", "B", [here, elsewhere]).passed
    machine = {
        "date": "d",
        "versions": {"torch": "1"},
        "load_average": [1.0],
        "cpu": "c",
        "cores": 2,
        "memory_gib": 1,
        "platform": "p",
        "python": "3",
        "commit": "abc",
    }
    text = render([BenchResult("b", "B", [here, elsewhere])], machine, 60.0, {})
    assert "**missed** (recorded, not gating)" in text and "Recorded on **GPU box**" in text
    assert "exit status 1" in text
    assert math.isclose(Figure("z", 50.0, "images/s", limit=200.0).share_of_limit or 0, 0.25)
