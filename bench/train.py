"""Training throughput: data loader alone, model steps alone, and both together.

Every figure is images/s measured in this run; ratios compare against the plain fp32 eager
configuration measured in the same run (the research notebook's way: fp32, NCHW, no
compile). On CUDA it also samples GPU utilisation with nvidia-smi during the end-to-end
steps and reports the loader-to-model ratio (the loader must outrun the model, or the GPU
waits). Writes ``bench/results/train.json``.

Usage: python -m bench.train --data data/processed [--backbones mobilenet_v2,resnet50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from faces_core.train.dataset import load_face_table
from faces_core.train.loop import make_loader, pick_device, restrict, select_heads
from faces_core.train.model import MultiTaskNet, multitask_loss
from faces_core.train.settings import TrainSettings

RESULTS = Path(__file__).resolve().parent / "results"


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
    use_amp = amp and device.type == "cuda"

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
    """Mean GPU utilisation (%) from nvidia-smi, sampled every 0.2 s while active."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                self.samples.append(float(out.stdout.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self._stop.wait(0.2)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


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


class _Null:
    mean = None

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


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

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (30 if cuda else 4)
    batch = args.batch_size or (256 if cuda else 64)
    workers = args.workers or min(8, os.cpu_count() or 1)
    base = TrainSettings(batch_size=batch, input_size=args.input_size, workers=workers, device=args.device)
    full = load_face_table(args.data, split="train")
    heads = select_heads(full, base.min_labels)
    table = restrict(full, list(heads))
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "faces": len(table),
        "batch_size": batch,
        "input_size": args.input_size,
        "workers": workers,
        "loader": {"cpu_decode": loader_rate(table, base, device, steps)},
    }
    if cuda:
        report["loader"]["gpu_decode"] = loader_rate(table, replace(base, gpu_decode=True), device, steps)
    configs = [("fp32", False, False, False)]
    if cuda:
        configs += [
            ("bf16", True, False, False),
            ("bf16+channels_last", True, True, False),
            ("bf16+channels_last+compile", True, True, True),
        ]
    for backbone in args.backbones.split(","):
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
        print(json.dumps({backbone: entry}, indent=2), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["loader"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
