"""Smoke tests: each benchmark runs at a tiny size and reports consistent figures.

The benchmarks themselves stay out of the test suite (``make bench``); these prove each one
still runs end to end, loses nothing and writes what RESULTS.md is built from. Targets are
not asserted at tiny sizes, where they mean nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import annotate, download, million, partition, scaling, train
from bench.__main__ import main
from bench.common import (
    THIS_MACHINE,
    BenchResult,
    Figure,
    Sample,
    impossible_exponent,
    impossible_rate,
    interleave,
    tree_rss,
)
from bench.report import render
from faces_core.annotate.store import read_files
from faces_core.storage import read_faces

pytestmark = [pytest.mark.bench, pytest.mark.slow]


def test_download_bench_compares_every_contender_on_both_sets(tmp_path: Path) -> None:
    size = download.DownloadBench.tiny()
    result = download.run(tmp_path, size)
    details = result.details
    for key, urls in (("fixed", size.images), ("mixed", size.mixed_urls)):
        rounds = details[key]
        assert set(rounds["samples"]) == {"ours", "pool"}  # img2dataset is off at tiny size
        dead = sum(1 for sha in json.loads((tmp_path / key / "set.json").read_text())["expected"] if sha is None)
        assert (dead == 0) == (key == "fixed")
        for side, samples in rounds["samples"].items():
            for sample in samples:
                extra = sample["extra"]
                assert (extra["ok"], extra["failed"], extra["lost"]) == (urls - dead, dead, 0), side
                assert sample["items"] == urls and sample["cpu_s"] > 0 and sample["peak_rss_mib"] > 10
                assert extra["t50"] <= extra["t99"] <= extra["t100"]
        assert all(s["extra"]["refetched"] == 0 for s in rounds["samples"]["ours"])
        assert rounds["limit_s"] > 0 and len(rounds["loads"]) == len(rounds["samples"]["ours"])
    share = [f for f in result.figures if f.measure.endswith("share of the latency limit")]
    assert len(share) == 2 and all(f.limit and f.target for f in share)
    versus = [f for f in result.figures if " vs pool " in f.measure]
    assert len(versus) == 2 and all(f.ratio and f.ratio > 0 and f.met is None for f in versus)
    assert details["profile"]["urls"] == size.profile_urls and details["profile"]["ms_per_url"] > 0


def test_img2dataset_run_keeps_original_bytes(tmp_path: Path) -> None:
    command = download.img2dataset_bin() if download.IMG2DATASET.exists() else None
    if command is None:
        pytest.skip(f"img2dataset's venv {download.IMG2DATASET} is not there")
    routes, expected, latencies, paths = download.build_routes(12, (0.0, 0.0), 0.25, 3, "t")
    with download.ServerProcess(routes) as server:
        urlset = download.UrlSet([f"http://127.0.0.1:{server.port}{p}" for p in paths], expected, latencies)
        urlset.write(tmp_path)
        sample = download.run_img2dataset(command, tmp_path / "urls.txt", expected, tmp_path / "out", 4)
    ok = sum(sha is not None for sha in expected)
    assert 0 < ok < 12
    assert (sample.extra["ok"], sample.extra["lost"], sample.items) == (ok, 0, 12)


def test_interleave_stops_on_a_stable_ratio_and_flags_impossible_values() -> None:
    ticks = iter(range(1, 100))

    def steady() -> Sample:
        return Sample(wall_s=1.0, cpu_s=0.5, items=10)

    def noisy() -> Sample:
        return Sample(wall_s=float(next(ticks)), cpu_s=0.5, items=10)

    stable = interleave({"ours": steady, "base": steady}, min_rounds=2, max_rounds=5)
    assert len(stable.loads) == 2 and stable.median_ratio("base") == 1.0 and "under 10%" in stable.stopped
    unstable = interleave({"ours": steady, "base": noisy}, min_rounds=2, max_rounds=4)
    assert len(unstable.loads) == 4 and "round cap" in unstable.stopped and unstable.spread("base") > 0.1
    assert impossible_rate(120.0, 100.0) and not impossible_rate(100.0, 100.0)
    assert impossible_exponent(-0.23) and not impossible_exponent(0.9)
    bad = Figure("annotate exponent", -0.23, "", failed=impossible_exponent(-0.23))
    assert bad.met is False and bad.gating and not BenchResult("s", "S", [bad]).passed


def test_partition_bench_writes_both_datasets(tmp_path: Path) -> None:
    result = partition.run(tmp_path, partition.PartitionBench.tiny())
    details = result.details
    ours = details["ours"]["all cores"]
    assert details["generated"] is True
    assert read_faces(ours["out_dir"]).count_rows() == ours["faces"] > 0
    assert (
        len(pd.read_parquet(details["rounds"]["samples"]["naive"][0]["extra"]["out"])) == details["naive"]["faces"] > 0
    )
    versus_naive, versus_same = result.figures
    assert versus_naive.ratio == pytest.approx(ours["rate"] / details["naive"]["rate"])
    assert versus_naive.target == ">= 3x" and versus_naive.met == (versus_naive.ratio >= 3 and not versus_naive.failed)
    assert versus_same.ratio == pytest.approx(ours["rate"] / details["same_work"]["rate"]) and versus_same.met is None
    # the same-work baseline keeps what the naive one keeps (both drop crops under the smallest bucket)
    assert (
        len(pd.read_parquet(details["rounds"]["samples"]["same work"][0]["extra"]["out"])) == details["naive"]["faces"]
    )


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


def test_annotate_bench_runs_ours_and_both_facenet_baselines_on_both_sets(tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    size = annotate.AnnotateBench.tiny()
    phones = annotate.write_mixed(tmp_path / "phones", 3)
    with Image.open(phones[2]) as stored:  # every third is a portrait stored sideways
        assert stored.getexif().get(0x0112) == 6 and stored.size[0] > stored.size[1]
        assert ImageOps.exif_transpose(stored).size[0] < ImageOps.exif_transpose(stored).size[1]
    result = annotate.run(tmp_path / "work", size)
    for key, count in (("640x480", size.images), ("mixed", size.mixed)):
        samples = result.details[key]["samples"]
        assert set(samples) == {"ours", "batched", "naive"}
        for side, [sample] in samples.items():
            extra = sample["extra"]
            assert sample["items"] == extra["images"] == count, side
            assert len(extra["per_image"]) == count and sum(extra["per_image"]) == extra["faces"], side
    gating = [f for f in result.figures if f.target]
    assert len(result.figures) == 4 and [f.measure.split(":")[0] for f in gating] == ["mixed"]
    assert "vs batched" in gating[0].measure and "no fewer faces" in gating[0].target


def test_million_simulation_plans_downloads_and_makes_no_task_run_per_item(tmp_path: Path) -> None:
    size = million.MillionBench.tiny()
    result = million.run(tmp_path, size)
    data = result.details
    for n in size.sizes:
        plan = data["plan"][str(n)]
        assert plan["lines"] == plan["faces"] == plan["jobs"] == n and plan["rejections"] == 0
        assert list(plan["phases"]) == ["start", "image store index", "parse+validate", "download report", "plan+shard"]
        assert plan["peak_rss_mib"] > 50
        download_run = data["download"][str(n)]
        assert (download_run["stored"], download_run["rejected"]) == (n, 0)
    for n in size.flow_sizes:
        flow = data["flow"][str(n)]
        assert flow["faces"] == n  # every image its own content: nothing rejected as a duplicate
        assert flow["task_runs"] == 5  # parse (and one finding the end), download, one shard, write: not one per item
    [runs] = [f for f in result.figures if f.measure.startswith("Prefect flow")]
    assert runs.met is True and "no task run per item" in runs.target


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
    assert set(entry["model_only"]) == {"fp32", "bf16", "channels_last", "bf16+channels_last"}  # toggles on CPU
    assert entry["model_only"]["fp32"] > 0 and entry["end_to_end"] > 0
    assert entry["loader_to_model"] == pytest.approx(here["loader"]["cpu_decode"] / max(entry["model_only"].values()))
    recorded = [f for f in result.figures if f.machine != THIS_MACHINE]
    for figure in recorded:  # whatever was recorded, its verdict follows its own figures
        if "loader-to-model" in figure.measure:
            assert figure.met == (figure.ours >= train.TARGET_LOADER_TO_MODEL)
    assert not any(f.gating for f in recorded)
    assert all(f.met is None for f in result.figures if f.machine == THIS_MACHINE)
    assert result.passed


def test_gpu_sampler_reads_nothing_without_a_gpu_and_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the sampler would read it")
    with train.GpuSampler(interval=0.01) as sampler:
        time.sleep(0.05)
    assert sampler.mean is None and sampler.source.endswith("(failed)")


def test_entry_point_writes_json_and_markdown(tmp_path: Path) -> None:
    status = main(["--tiny", "--only", "download", "--out-dir", str(tmp_path), "--markdown", str(tmp_path / "R.md")])
    written = json.loads((tmp_path / "download.json").read_text())
    assert status == (0 if written["passed"] else 1)
    assert written["machine"]["cores"] >= 1 and len(written["figures"]) == 8  # 4 per URL set
    text = (tmp_path / "R.md").read_text()
    assert "## Download: 40 URLs at 20 ms and 60 URLs at 5-50 ms with 5% dead links, concurrency 8" in text
    assert sum(" ours vs pool (concurrency 8) |" in line for line in text.splitlines()) == 2
    assert "| download | 40 URLs: ours, share of the latency limit |" in text  # a target: in the headline


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
    assert "| fine-tuned, distill 0.0 |" in text  # the recorded expression bench, beside the peers
    assert math.isclose(Figure("z", 50.0, "images/s", limit=200.0).share_of_limit or 0, 0.25)
