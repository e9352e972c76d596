"""SIGTERM stops annotate, train, evaluate and predict within seconds, whatever they are blocked on.

Ingest is covered by test_signals.py (slow server) and serve by test_ops.py. Here each command
runs in a real subprocess, mid-work (annotate over a folder that also holds a FIFO, train on
many epochs, predict waiting on a URL that drips a byte at a time), and gets one SIGTERM. Exit
status 143 (``128 + SIGTERM``) and a line saying what was kept: the stop path every command shares.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faces_cli.stopping import child_pids, running
from faces_core.sample.faces import write_annotate_sample
from faces_core.testing import LoopbackServer, Route
from tests.conftest import REPO
from tests.train.conftest import ingested_sample, tiny_model

__all__ = ["ingested_sample", "tiny_model"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "no_env_proxy")]

STOP_WITHIN_S = 10.0


class Command:
    """A command in its own process, its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "\n".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.1)

    def stop(self) -> tuple[int, float]:
        """SIGTERM, then (exit status, seconds until the process ended)."""
        assert self.proc.poll() is None, "the command ended before it could be stopped:\n" + "\n".join(self.lines[-30:])
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("still running 60 s after SIGTERM:\n" + "\n".join(self.lines[-30:])) from None
        return code, time.monotonic() - started


def _env(tmp_path: Path, params: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "params.yaml").write_text(params)
    return {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "FACES_PARAMS": str(tmp_path / "params.yaml"),
    }


def _stopped(code: int, seconds: float, lines: list[str]) -> None:
    """Every command ends the same way: exit 143 and one line saying so (faces_cli/stopping.py)."""
    assert code == 143, (code, "\n".join(lines[-30:]))
    assert seconds < STOP_WITHIN_S, (seconds, "\n".join(lines[-30:]))
    time.sleep(0.2)  # the reader thread takes the last lines
    assert any(line.startswith("faces ") and "stopped by SIGTERM" in line for line in lines), "\n".join(lines[-30:])


def test_annotate_stops_while_a_fifo_sits_in_its_folder(tmp_path: Path) -> None:
    photos = write_annotate_sample(tmp_path / "sample").root
    folder = tmp_path / "in"
    for copy in range(8):  # enough photos to still be busy when the signal comes
        shutil.copytree(photos, folder / f"copy{copy}", ignore=shutil.ignore_patterns("clips"))
    os.mkfifo(folder / "pipe.jpg")
    env = _env(tmp_path, "annotate: {shard_size: 4, detect: {max_side: 640, device: cpu}}\n")
    command = Command(["-m", "flows.annotate", str(folder), "--out", str(tmp_path / "out")], env)
    command.wait_for("Beginning flow run")
    time.sleep(3)
    _stopped(*command.stop(), command.lines)


def test_train_stops_mid_epoch(ingested_sample: Path, tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        "train: {recipe: cnn, backbone: mobilenet_v3_large, weights: none, input_size: 32, epochs: 200, batch_size: 8, "
        f"workers: 2, min_labels: 1, device: cpu, checkpoint_dir: {tmp_path / 'ckpt'}, "
        f"metrics_file: {tmp_path / 'train.json'}, plots_file: {tmp_path / 'train.csv'}}}\n",
    )
    command = Command(["-m", "flows.train", "--data", str(ingested_sample), "--model-dir", str(tmp_path / "m")], env)
    command.wait_for("Beginning flow run")
    time.sleep(4)
    _stopped(*command.stop(), command.lines)


def test_train_stops_while_computing_face_descriptors(ingested_sample: Path, tmp_path: Path) -> None:
    """The embedding recipe's descriptor processes are stopped with it, not left to finish a chunk."""
    env = _env(
        tmp_path,
        "train: {recipe: embedding, min_labels: 1, heads: {embed_workers: 2, flip: true}, "
        f"checkpoint_dir: {tmp_path / 'ckpt'}, metrics_file: {tmp_path / 'train.json'}, "
        f"plots_file: {tmp_path / 'train.csv'}}}\n",
    )
    env["PREFECT_LOGGING_EXTRA_LOGGERS"] = "faces_core"  # heads.py's progress lines, as `make` shows them
    command = Command(["-m", "flows.train", "--data", str(ingested_sample), "--model-dir", str(tmp_path / "m")], env)
    command.wait_for("to compute")
    time.sleep(1)
    workers = child_pids(command.proc.pid)
    _stopped(*command.stop(), command.lines)
    deadline = time.monotonic() + 5
    while (alive := [p for p in workers if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in alive]
    assert not (tmp_path / "m" / "model.pt").exists()


def test_predict_stops_while_a_url_drips(tiny_model: Path, tmp_path: Path) -> None:
    drip = Route(body=b"\xff\xd8" + b"\x00" * 100_000, chunk_size=1, chunk_delay=1.0)
    with LoopbackServer({"/drip.jpg": drip}) as server:
        env = _env(
            tmp_path,
            f"predict: {{model_dir: {tiny_model}, device: cpu, timeout_s: 30, retries: 0}}\n"
            "download: {allow_private_hosts: true, attempt_timeout_s: 600, url_timeout_s: 600}\n",
        )
        command = Command(["-m", "faces_cli", "predict", "--whole-image", server.url("/drip.jpg")], env)
        deadline = time.monotonic() + 60
        while not server.hits.get(server.url("/drip.jpg")) and not server.hits.get("/drip.jpg"):
            assert time.monotonic() < deadline and command.proc.poll() is None, "\n".join(command.lines[-20:])
            time.sleep(0.1)
        time.sleep(2)
        _stopped(*command.stop(), command.lines)


def test_evaluate_stops_mid_scoring(tmp_path: Path) -> None:
    from dataclasses import replace

    from faces_core.ingest.pipeline import IngestSettings, run_ingest
    from faces_core.ingest.sources.imfdb import scan_imfdb
    from faces_core.sample.imfdb import write_imfdb_sample
    from faces_core.train.loop import train
    from faces_core.train.settings import TrainPaths
    from tests.train.conftest import TINY_MODEL

    root = tmp_path / "IMFDB_final"
    write_imfdb_sample(root, actors=8, movies=3, faces=30)  # enough faces to be scoring for seconds
    run_ingest(
        None, scan_imfdb(root), root, IngestSettings(raw_dir=str(tmp_path / "raw"), out_dir=str(tmp_path / "data"))
    )
    paths = TrainPaths(tmp_path / "m", tmp_path / "t.json", tmp_path / "t.csv", tmp_path / "ckpt")
    train(tmp_path / "data", replace(TINY_MODEL, input_size=96, steps_per_epoch=1), paths)
    env = _env(tmp_path, "evaluate: {split: all, batch_size: 1, workers: 0, device: cpu, min_labels: 1}\n")
    args = ["-m", "flows.evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "data")]
    command = Command([*args, "--out", str(tmp_path / "eval.json"), "--plots-dir", str(tmp_path / "plots")], env)
    command.wait_for("Beginning flow run")
    time.sleep(1.5)
    _stopped(*command.stop(), command.lines)
