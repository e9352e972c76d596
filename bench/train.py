"""Training throughput: data loader alone, model steps alone, and both together.

Every figure is images/s measured in this run; ratios compare against the plain fp32 eager
configuration measured in the same run (the research notebook's way: fp32, NCHW, no
compile). On CUDA it also samples GPU utilisation with nvidia-smi during the end-to-end
steps and reports the loader-to-model ratio (the loader must outrun the model, or the GPU
waits). Writes ``bench/results/train.json``. :func:`run` is the ``python -m bench`` entry:
CPU figures measured here plus the GPU figures recorded on the lent machine
(``bench/recorded/train_h200.json``).

Usage: python -m bench.train --data data/processed [--backbones mobilenet_v2,resnet50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.common import THIS_MACHINE, BenchResult, Figure, ratio
from faces_core.inference.model import MultiTaskNet, multitask_loss
from faces_core.train.dataset import load_face_table
from faces_core.train.loop import make_loader, pick_device, restrict, select_heads
from faces_core.train.settings import TrainSettings

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "train"
TARGET_LOADER_TO_MODEL = 1.5
RECORDED_GPU = Path(__file__).resolve().parent / "recorded" / "train_h200.json"
"""``python -m bench.train`` output from the lent GPU machine (this machine has no GPU)."""
RECORDED_GPU_MACHINE = "NVIDIA H200 (lent device, 2026-11-27)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(table: Any, settings: TrainSettings, device: torch.device, batches: int) -> float:
    """Images/s of the loader alone, batches delivered on the device (decode + augment + copy)."""
    generator = torch.Generator().manual_seed(0)
    loader = make_loader(table, settings, device, True, generator)
    seen, start = 0, 0.0
    for i, (x, _) in enumerate(loader):
        if i == 1:  # worker start-up excluded
            _sync(device)
            seen, start = 0, time.perf_counter()
        seen += x.shape[0]
        if i >= batches:
            break
    _sync(device)
    return seen / (time.perf_counter() - start)


def model_rate(
    backbone: str,
    heads: dict[str, list[str]],
    settings: TrainSettings,
    device: torch.device,
    steps: int,
    *,
    amp: bool,
    channels_last: bool,
    compile_model: bool,
) -> float:
    """Images/s of training steps alone on a batch already on the device."""
    torch.manual_seed(0)
    attrs = list(heads)
    model = MultiTaskNet(backbone, {a: len(c) for a, c in heads.items()}).to(device)
    x = torch.randn(settings.batch_size, 3, settings.input_size, settings.input_size, device=device)
    y = torch.stack([torch.randint(0, len(heads[a]), (settings.batch_size,), device=device) for a in attrs], dim=1)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    step_model: Any = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    use_amp = amp  # bf16 autocast also runs on CPU (the toggles are exercised there by the smoke test)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, _ = multitask_loss(step_model(x), y, attrs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3 if not compile_model else 5):  # warm-up (and compilation)
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * settings.batch_size / (time.perf_counter() - start)


class GpuSampler:
    """GPU utilisation (%) sampled every ``interval`` s (10 Hz) while active.

    Through NVML (``pynvml``, from the ``nvidia-ml-py`` package) when it imports and finds a
    GPU, else ``nvidia-smi`` (a process per sample: coarser). ``mean`` is None without samples,
    so a window too short to sample reads as "not measured", never as 0 %.
    """

    def __init__(self, interval: float = 0.1, index: int = 0) -> None:
        self.interval = interval
        self.index = index
        self.samples: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None

    def _nvml(self) -> Callable[[], float] | None:
        try:
            import pynvml  # type: ignore[import-not-found, unused-ignore]

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        except Exception:  # not installed, no driver, no GPU
            return None
        self.source = "nvml"
        return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def _smi(self) -> float:
        out = subprocess.run(
            ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return float(out.stdout.split()[0])

    def _run(self) -> None:
        read = self._nvml()
        if read is None:
            self.source = "nvidia-smi"
            read = self._smi
        while not self._stop.is_set():
            try:
                self.samples.append(read())
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                self.source += " (failed)"
                return
            except Exception:  # NVML errors
                self.source += " (failed)"
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def end_to_end_rate(
    table: Any, heads: dict[str, list[str]], settings: TrainSettings, device: torch.device, batches: int
) -> tuple[float, float | None]:
    """Images/s of real training steps fed by the real loader, and mean GPU utilisation."""
    torch.manual_seed(0)
    attrs = list(heads)
    model = MultiTaskNet(settings.backbone, {a: len(c) for a, c in heads.items()}).to(device)
    if settings.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    step_model: Any = torch.compile(model) if settings.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = make_loader(table, settings, device, True, torch.Generator().manual_seed(0))
    seen, start = 0, 0.0
    with GpuSampler() if device.type == "cuda" else _Null() as sampler:
        for i, (x, y) in enumerate(loader):
            if i == 2:
                _sync(device)
                seen, start = 0, time.perf_counter()
            if settings.channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.amp and device.type == "cuda"):
                loss, _ = multitask_loss(step_model(x), y, attrs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += x.shape[0]
            if i >= batches:
                break
        _sync(device)
        elapsed = time.perf_counter() - start
    return seen / elapsed, getattr(sampler, "mean", None)


def _sampler_source() -> str:
    """How :class:`GpuSampler` will sample on this machine."""
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return "nvidia-smi at 10 Hz"
    return "NVML at 10 Hz"


class _Null:
    mean = None

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def measure(
    data: str | Path,
    backbones: list[str],
    device_name: str = "auto",
    batch_size: int = 0,
    input_size: int = 96,
    workers: int = 0,
    steps: int = 0,
    min_labels: int | None = None,
    log: bool = True,
    threads: int = 0,
    toggles: bool = False,
) -> dict[str, Any]:
    """Loader, model and end-to-end rates on the training split of an ingest output.

    Args:
        data: Ingest ``out_dir``.
        backbones: Backbones to time.
        device_name: ``auto``, ``cpu`` or ``cuda``.
        batch_size: 0: 256 on CUDA, 64 on CPU.
        input_size: Model input side, px.
        workers: DataLoader workers; 0: min(8, cores).
        steps: Timed steps/batches; 0: 30 on CUDA, 4 on CPU.
        min_labels: Labels a head needs (TrainSettings' default when None).
        log: Print each backbone's entry as it is measured.
        threads: Torch intra-op threads on CPU (0: torch's default, one per core).
        toggles: Also time bf16 and channels_last on and off on a CPU (always on a GPU).

    Returns:
        The report that ``bench/results/train.json`` holds.
    """
    before = torch.get_num_threads()
    if threads and pick_device(device_name).type == "cpu":
        torch.set_num_threads(threads)
    try:
        return _measure(data, backbones, device_name, batch_size, input_size, workers, steps, min_labels, log, toggles)
    finally:
        torch.set_num_threads(before)


def _measure(
    data: str | Path,
    backbones: list[str],
    device_name: str,
    batch_size: int,
    input_size: int,
    workers: int,
    steps: int,
    min_labels: int | None,
    log: bool,
    toggles: bool = False,
) -> dict[str, Any]:
    device = pick_device(device_name)
    cuda = device.type == "cuda"
    steps = steps or (30 if cuda else 4)
    batch = batch_size or (256 if cuda else 64)
    workers = workers or min(8, os.cpu_count() or 1)
    base = TrainSettings(batch_size=batch, input_size=input_size, workers=workers, device=device_name)
    if min_labels is not None:
        base = replace(base, min_labels=min_labels)
    full = load_face_table(data, split="train")
    heads = select_heads(full, base.min_labels)
    table = restrict(full, list(heads))
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu_sampler": _sampler_source() if cuda else None,
        "cores": os.cpu_count(),
        "faces": len(table),
        "batch_size": batch,
        "input_size": input_size,
        "workers": workers,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "loader": {"cpu_decode": loader_rate(table, base, device, steps)},
    }
    if cuda:
        report["loader"]["gpu_decode"] = loader_rate(table, replace(base, gpu_decode=True), device, steps)
    configs = [("fp32", False, False, False)]
    if cuda or toggles:
        configs += [
            ("bf16", True, False, False),
            ("channels_last", False, True, False),
            ("bf16+channels_last", True, True, False),
        ]
    if cuda:
        configs.append(("bf16+channels_last+compile", True, True, True))
    for backbone in backbones:
        rates = {
            name: model_rate(backbone, heads, base, device, steps, amp=amp, channels_last=cl, compile_model=comp)
            for name, amp, cl, comp in configs
        }
        entry: dict[str, Any] = {
            "model_only": rates,
            "speedup_vs_fp32": {k: v / rates["fp32"] for k, v in rates.items()},
        }
        best_loader = max(report["loader"].values())
        entry["loader_to_model"] = best_loader / max(rates.values())
        e2e_settings = replace(base, backbone=backbone, amp=cuda, channels_last=cuda)
        entry["end_to_end"], entry["gpu_util_percent"] = end_to_end_rate(table, heads, e2e_settings, device, steps)
        if cuda:
            gpu_rate, gpu_util = end_to_end_rate(table, heads, replace(e2e_settings, gpu_decode=True), device, steps)
            entry["end_to_end_gpu_decode"], entry["gpu_util_percent_gpu_decode"] = gpu_rate, gpu_util
        report[backbone] = entry
        if log:
            print(json.dumps({backbone: entry}, indent=2), flush=True)
    return report


def figures(report: dict[str, Any], backbones: list[str], machine: str = THIS_MACHINE) -> list[Figure]:
    """Table rows of a :func:`measure` report (from this run or recorded on another machine)."""
    cuda = "gpu_decode" in report["loader"]
    where = f"{report['device']}, batch {report['batch_size']}, {report['input_size']} px"
    if "threads" in report and not cuda:
        where += f", {report['threads']} torch thread{'s' if report['threads'] > 1 else ''}"
    loader = report["loader"]["cpu_decode"]
    rows = [Figure(f"loader alone, {report['workers']} CPU workers ({where})", loader, "images/s", machine=machine)]
    if cuda:
        gpu_loader = report["loader"]["gpu_decode"]
        rows.append(
            Figure(
                "loader alone, GPU decode (nvJPEG)",
                gpu_loader,
                "images/s",
                baseline=loader,
                baseline_name=f"{report['workers']} CPU workers",
                ratio=ratio(gpu_loader, loader),
                machine=machine,
            )
        )
    best_loader = max(report["loader"].values())
    for backbone in backbones:
        entry = report[backbone]
        rates: dict[str, float] = entry["model_only"]
        for config, rate in rates.items():
            rows.append(
                Figure(
                    f"{backbone} model steps alone, {config}",
                    rate,
                    "images/s",
                    baseline=None if config == "fp32" else rates["fp32"],
                    baseline_name="" if config == "fp32" else "fp32 eager (the notebook's way)",
                    ratio=None if config == "fp32" else ratio(rate, rates["fp32"]),
                    machine=machine,
                )
            )
        best_model = max(rates.values())
        rows.append(
            Figure(
                f"{backbone} loader-to-model ratio (fastest loader / fastest model config)",
                entry["loader_to_model"],
                "x",
                target=f">= {TARGET_LOADER_TO_MODEL:g} on GPU" if cuda else "",
                met=entry["loader_to_model"] >= TARGET_LOADER_TO_MODEL if cuda else None,
                machine=machine,
                note="" if cuda else "the target is for the GPU; on CPU the model is the bottleneck by design",
            )
        )
        util = entry.get("gpu_util_percent")
        limit = min(best_loader, best_model)
        note = "limit: the slower of loader and model alone"
        if cuda:
            source = report.get("gpu_sampler", "nvidia-smi, 5 Hz")
            note += (
                f"; GPU utilisation {util:.0f} % ({source})"
                if util is not None
                else "; GPU utilisation not sampled (window too short)"
            )
        if entry["end_to_end"] > 1.05 * limit:
            note += "; above the limit: other jobs slowed the model-only steps (few steps on a shared CPU)"
        rows.append(
            Figure(
                f"{backbone} end to end (loader feeding real steps)",
                entry["end_to_end"],
                "images/s",
                limit=limit,
                machine=machine,
                note=note,
            )
        )
        if cuda and "end_to_end_gpu_decode" in entry:
            rows.append(
                Figure(
                    f"{backbone} end to end, GPU decode",
                    entry["end_to_end_gpu_decode"],
                    "images/s",
                    baseline=entry["end_to_end"],
                    baseline_name="CPU-decode end to end",
                    ratio=ratio(entry["end_to_end_gpu_decode"], entry["end_to_end"]),
                    machine=machine,
                )
            )
    return rows


@dataclass(frozen=True, slots=True)
class TrainBench:
    """Sizes of the CPU training benchmark (``tiny`` for the smoke test)."""

    backbones: tuple[str, ...] = ("mobilenet_v2", "resnet50")
    batch_size: int = 64
    input_size: int = 96
    steps: int = 6
    workers: int = 0
    threads: int = 1
    """One intra-op thread: on the shared 2-core machine two threads spin against the other
    jobs and a step's time varied tenfold (7.5 s vs 0.5 s); one thread is steady and faster."""
    toggles: bool = False
    """Also time bf16 and channels_last on and off on the CPU (always done on a GPU)."""

    @classmethod
    def tiny(cls) -> TrainBench:
        return cls(backbones=("mobilenet_v2",), batch_size=8, input_size=32, steps=2, workers=1, toggles=True)


def _sample_data(work: Path) -> Path:
    """Ingest a small generated IMFDB set (when no ingest output is given) and return its out_dir."""
    from bench.partition import bench_settings, ours
    from faces_core.sample.imfdb import write_imfdb_sample

    root = work / "IMFDB_final"
    write_imfdb_sample(root, actors=8, movies=2, faces=12)
    settings = bench_settings(work, workers=1)
    ours(root, settings)
    return Path(settings.out_dir)


def run(work: Path | None = None, size: TrainBench | None = None, data: Path | None = None) -> BenchResult:
    """Time training throughput on this machine and add the figures recorded on the GPU.

    Args:
        work: Scratch folder (a temporary one when None).
        size: Backbones, batch, input size and steps.
        data: Ingest out_dir to train on; a small generated set is ingested when None.
    """
    size = size or TrainBench()
    work = work or Path(tempfile.mkdtemp(prefix="faces-bench-train-"))
    data = data or _sample_data(work / "data")
    report = measure(
        data,
        list(size.backbones),
        device_name="auto",
        batch_size=size.batch_size,
        input_size=size.input_size,
        steps=size.steps,
        workers=size.workers,
        min_labels=1,
        log=False,
        threads=size.threads,
        toggles=size.toggles,
    )
    result = BenchResult(NAME, "Training throughput: data loader, model steps, end to end")
    result.figures = figures(report, list(size.backbones))
    result.details = {"this_machine": report}
    if RECORDED_GPU.exists():
        recorded = json.loads(RECORDED_GPU.read_text())
        backbones = [k for k, v in recorded.items() if isinstance(v, dict) and "model_only" in v]
        pinned = torch.__version__.split("+")[0]
        stale = str(recorded.get("torch", "")).split("+")[0] != pinned
        machine = RECORDED_GPU_MACHINE + (f", torch {recorded.get('torch')}, not the pinned {pinned}" if stale else "")
        result.figures += figures(recorded, backbones, machine=machine)
        if stale:
            result.notes.append(
                f"**The GPU figures are still to be measured on the pinned torch {pinned}**: the recorded ones "
                f"are from torch {recorded.get('torch')} and no GPU was lent to the run that wrote this report. "
                "On a lent GPU run `python -m bench.train --out bench/recorded/train_<gpu>.json` (NVML utilisation "
                "at 10 Hz when nvidia-ml-py is installed, bf16 and channels_last each on and off) and "
                "`python -m bench.annotate --device cuda --model models` (640x480 and the mixed set)."
            )
        result.details["recorded_gpu"] = {"machine": RECORDED_GPU_MACHINE, "file": str(RECORDED_GPU.name), **recorded}
        result.notes.append(
            f"GPU figures were recorded by `python -m bench.train` on the {RECORDED_GPU_MACHINE} "
            f"({recorded['cores']} cores, {recorded['workers']} loader workers, torch {recorded['torch']}), "
            f"file bench/{RECORDED_GPU.relative_to(RECORDED_GPU.parents[1])}; they are shown, not re-measured, "
            "and do not decide the exit status of this run."
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/processed", help="ingest out_dir")
    parser.add_argument("--backbones", default="mobilenet_v2,resnet50")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=0, help="0: 256 on CUDA, 64 on CPU")
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=0, help="0: min(8, cores)")
    parser.add_argument("--steps", type=int, default=0, help="0: 30 on CUDA, 4 on CPU")
    parser.add_argument("--out", default=str(RESULTS / "train.json"))
    args = parser.parse_args()
    report = measure(
        args.data,
        args.backbones.split(","),
        device_name=args.device,
        batch_size=args.batch_size,
        input_size=args.input_size,
        workers=args.workers,
        steps=args.steps,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["loader"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
