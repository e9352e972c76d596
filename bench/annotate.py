"""Annotation throughput: our batched pipeline against a naive per-image MTCNN loop.

Both run on the same generated 640x480 JPEGs (one to three shaded faces each, some with
none), with the same detector weights and settings (``annotate.detect`` of params.yaml), each
in its own process so its peak memory (RSS sampled from outside) is its own. The naive loop is what the old
tools did: open each file, ``MTCNN(keep_all=True).detect(image, landmarks=True)``, one image
at a time. Ours is :func:`faces_core.annotate.pipeline.annotate_folders`: files decoded in
threads while the detector runs on batches, Parquet parts written, detection only unless
``--model`` is given. One warm-up image each is not timed. Writes
``bench/results/annotate.json``; exits 1 when ours is under ``--target`` times the naive loop.

Usage: python -m bench.annotate [--images 96] [--repeats 2] [--device auto] [--model models]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import BenchResult, Figure, PeakTreeRss

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (640, 480)


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 640x480 JPEGs with 0-3 shaded faces of 60-160 px (a quarter without faces)."""
    from faces_core.sample.faces import face_box, faces_image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        faces = (
            []
            if i % 4 == 3
            else [face_box(80 + 200 * k + rng.randrange(40), 240, rng.randrange(60, 140)) for k in range(1 + i % 3)]
        )
        path = folder / f"img{i:04d}.jpg"
        faces_image(*SIZE, faces, rng).save(path, quality=90)
        paths.append(path)
    return paths


def run_naive(folder: Path, device: str) -> dict[str, Any]:
    """The per-image loop with facenet-pytorch's own MTCNN class."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    from faces_core.annotate.detect import resolve_device
    from flows.params import annotate_config

    detect = annotate_config()[1].detect
    mtcnn = MTCNN(
        keep_all=True,
        min_face_size=detect.min_face_size,
        thresholds=list(detect.thresholds),
        factor=detect.factor,
        device=resolve_device(device),
    )
    paths = sorted(folder.glob("*.jpg"))
    mtcnn.detect(Image.open(paths[0]).convert("RGB"), landmarks=True)  # warm-up
    faces = 0
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            boxes, probs, _ = mtcnn.detect(image.convert("RGB"), landmarks=True)
        faces += 0 if boxes is None else sum(1 for p in probs if p is not None and p >= detect.min_confidence)
    seconds = time.perf_counter() - start
    return {
        "images": len(paths),
        "faces": faces,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(paths) / seconds, 2),
    }


def run_ours(folder: Path, device: str, model: str | None) -> dict[str, Any]:
    """The annotate pipeline (no Prefect) into a fresh output folder."""
    from dataclasses import replace

    from PIL import Image

    from faces_core.annotate.detect import prepare
    from faces_core.annotate.pipeline import annotate_folders, load_engine
    from faces_core.annotate.store import read_annotations
    from flows.params import annotate_config

    settings = annotate_config()[1]
    settings = replace(settings, detect=replace(settings.detect, device=device))
    paths = sorted(folder.glob("*.jpg"))
    engine = load_engine(model, settings)
    with Image.open(paths[0]) as first:
        engine.detector.detect([prepare(first.convert("RGB"), settings.detect.max_side)])  # warm-up
    with tempfile.TemporaryDirectory(prefix="bench-annotate-") as out:
        start = time.perf_counter()
        report = annotate_folders([folder], out, settings, model_dir=model)
        seconds = time.perf_counter() - start
        faces = read_annotations(out).num_rows
    return {
        "images": report.frames,
        "faces": faces,
        "seconds": round(seconds, 3),
        "images_per_s": round(report.frames / seconds, 2),
    }


def _rounds(folder: Path, device: str, model: str | None, repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Naive and ours ``repeats`` times each, interleaved; the fastest run of each, with the
    highest peak memory of each side's runs."""
    runs: dict[str, list[dict[str, Any]]] = {"naive": [], "ours": []}
    for _ in range(max(1, repeats)):
        runs["naive"].append(_child("naive", folder, device, None))
        runs["ours"].append(_child("ours", folder, device, model))
    best = {}
    for side, results in runs.items():
        fastest = dict(max(results, key=lambda r: r["images_per_s"]))
        fastest["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
        fastest["all_images_per_s"] = [r["images_per_s"] for r in results]
        best[side] = fastest
    return best["naive"], best["ours"]


def _child(mode: str, folder: Path, device: str, model: str | None) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.annotate", "--child", mode, "--dir", str(folder), "--device", device]
    if model:
        args += ["--model", model]
    # Peak memory is sampled from here: a child's own ru_maxrss starts from its parent's
    # high-water mark (Linux carries it across fork and exec), which after the training
    # benchmark in `python -m bench` is gigabytes that are not the child's.
    with (
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child,
        PeakTreeRss(child.pid) as rss,
    ):
        stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{stderr[-3000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_mb": round(rss.peak / 2**20, 1)}


NAME = "annotate"


@dataclass(frozen=True)
class AnnotateBench:
    """Size of the annotation benchmark: generated 640x480 images."""

    images: int = 96
    device: str = "auto"
    repeats: int = 2
    """Rounds, naive and ours interleaved; each side's fastest counts (a shared machine's
    noise only ever slows a run down)."""

    @classmethod
    def tiny(cls) -> AnnotateBench:
        return cls(images=4, repeats=1)


def run(work: Path | None = None, size: AnnotateBench | None = None) -> BenchResult:
    """Ours against the naive per-image loop on the same images, for ``python -m bench``."""
    size = size or AnnotateBench()
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-annotate-images-", dir=work) as tmp:
        folder = Path(tmp)
        write_images(folder, size.images)
        start = time.perf_counter()
        naive, ours = _rounds(folder, size.device, None, size.repeats)
        seconds = time.perf_counter() - start
    ratio = ours["images_per_s"] / naive["images_per_s"] if naive["images_per_s"] else 0.0
    return BenchResult(
        name=NAME,
        title=f"Annotation: {size.images} images of 640x480, detection on {size.device}",
        figures=[
            Figure(
                measure=f"annotate {size.images} images (faces {ours['faces']} vs {naive['faces']})",
                ours=ours["images_per_s"],
                unit="images/s",
                baseline=naive["images_per_s"],
                baseline_name="per-image MTCNN.detect loop",
                ratio=ratio,
                target=">= 1.5x",
                met=ratio >= 1.5,
            ),
            Figure(
                measure="peak memory, ours vs naive",
                ours=ours["peak_rss_mb"],
                unit="MB",
                baseline=naive["peak_rss_mb"],
                baseline_name="per-image loop",
                ratio=naive["peak_rss_mb"] / ours["peak_rss_mb"] if ours["peak_rss_mb"] else None,
                note="peak RSS of each run's process, sampled every 50 ms",
            ),
        ],
        details={"naive": naive, "ours": ours},
        seconds=seconds,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="generated 640x480 images (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the fastest of each side counts")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--model", help="also predict attributes with this model (ours only)")
    parser.add_argument("--target", type=float, default=1.5, help="minimum ours/naive images/s ratio")
    parser.add_argument("--out", default=str(RESULTS / "annotate.json"))
    parser.add_argument("--child", choices=("naive", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        folder = Path(args.dir)
        result = run_naive(folder, args.device) if args.child == "naive" else run_ours(folder, args.device, args.model)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-annotate-images-") as tmp:
        folder = Path(tmp)
        write_images(folder, args.images)
        naive, ours = _rounds(folder, args.device, args.model, args.repeats)
    ratio = ours["images_per_s"] / naive["images_per_s"] if naive["images_per_s"] else 0.0
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    result = {
        "benchmark": "annotate",
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "image_size": list(SIZE),
        "attributes": bool(args.model),
        "naive": naive,
        "ours": ours,
        "ratio": round(ratio, 2),
        "target": args.target,
        "ok": ratio >= args.target,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"annotate on {result['device']}: ours {ours['images_per_s']} images/s (peak {ours['peak_rss_mb']} MB) vs naive "
        f"{naive['images_per_s']} images/s (peak {naive['peak_rss_mb']} MB): {ratio:.2f}x (target {args.target}x); "
        f"faces {ours['faces']} vs {naive['faces']}"
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
