"""Training: real torch steps on a small ingested sample, masked loss, exact resume, DDP, the flow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from faces_core.inference.model import MultiTaskNet, load_model, multitask_loss
from faces_core.storage import read_faces
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.dataset import IGNORE_INDEX, FaceDataset, load_face_table
from faces_core.train.loop import CHECKPOINT_FILE, STEPS_FILE, select_heads, train
from faces_core.train.settings import TrainPaths
from tests.conftest import REPO
from tests.train.conftest import TINY_MODEL

TINY = replace(TINY_MODEL, epochs=2, steps_per_epoch=3)


def _paths(base: Path) -> TrainPaths:
    return TrainPaths(base / "models", base / "metrics" / "train.json", base / "plots" / "train.csv", base / "ckpt")


def test_table_targets_match_the_parquet_labels(ingested_sample: Path) -> None:
    table = load_face_table(ingested_sample, split="train")
    rows = read_faces(ingested_sample, split="train").to_table(columns=["face_id", "gender", "pose"]).sort_by("face_id")
    assert table.meta["face_id"] == rows["face_id"].to_pylist()
    g = table.attributes.index("gender")
    expected = [ATTRIBUTES["gender"].index(v) if v else IGNORE_INDEX for v in rows["gender"].to_pylist()]
    assert table.targets[:, g].tolist() == expected
    image, targets = FaceDataset(table, 48)[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert targets.tolist() == table.targets[0].tolist()


def test_real_steps_reduce_the_loss_on_a_fixed_batch(ingested_sample: Path) -> None:
    torch.manual_seed(0)
    table = load_face_table(ingested_sample, split="train")
    heads = select_heads(table, 1)
    attrs = list(heads)
    from faces_core.train.loop import restrict

    table = restrict(table, attrs)
    data = FaceDataset(table, 32)
    x = torch.stack([data[i][0] for i in range(16)])
    y = torch.stack([data[i][1] for i in range(16)])
    model = MultiTaskNet("resnet18", {a: len(c) for a, c in heads.items()})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss, _ = multitask_loss(model(x), y, attrs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_head_without_labels_in_the_batch_gets_zero_gradient() -> None:
    torch.manual_seed(0)
    model = MultiTaskNet("mobilenet_v3_large", {"gender": 2, "pose": 5})
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([[0, IGNORE_INDEX], [1, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX], [0, IGNORE_INDEX]])
    loss, parts = multitask_loss(model(x), y, ["gender", "pose"])
    loss.backward()
    pose = model.heads["pose"]
    assert pose.weight.grad is not None and torch.count_nonzero(pose.weight.grad) == 0
    assert pose.bias.grad is not None and torch.count_nonzero(pose.bias.grad) == 0
    assert torch.count_nonzero(model.heads["gender"].weight.grad) > 0
    assert float(parts["pose"]) == 0.0 and torch.isfinite(loss)


def test_train_writes_model_metrics_plots_and_checkpoint(ingested_sample: Path, tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    result = train(ingested_sample, TINY, paths)
    assert len(result.epochs) == 2 and result.best_epoch in (0, 1)
    model, meta = load_model(paths.model_dir)
    assert meta.backbone == "mobilenet_v3_large" and meta.input_size == 32
    assert set(meta.attributes) == set(model.heads) and "gender" in meta.attributes
    assert meta.attributes["gender"] == list(ATTRIBUTES["gender"])
    assert len(meta.data_version) == 64 and meta.metrics["epoch"] == result.best_epoch
    metrics = json.loads(paths.metrics_file.read_text())
    assert metrics["epochs"] == 2 and metrics["best_epoch"] == result.best_epoch
    lines = paths.plots_file.read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss,val_score") and len(lines) == 3
    assert (paths.checkpoint_dir / CHECKPOINT_FILE).is_file()
    steps = [json.loads(s) for s in (paths.checkpoint_dir / STEPS_FILE).read_text().splitlines()]
    assert [(s["epoch"], s["step"]) for s in steps] == [(e, i) for e in range(2) for i in range(3)]
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out["gender"].shape == (2, 2)


_DRIVER = """
import sys
from pathlib import Path
from faces_core.train.loop import train
from faces_core.train.settings import TrainPaths, TrainSettings
base = Path(sys.argv[2])
settings = TrainSettings(backbone="mobilenet_v3_large", weights="none", input_size=64, epochs=3,
    steps_per_epoch=12, batch_size=8, workers=0, min_labels=1, device="cpu", log_every=0)
paths = TrainPaths(base / "models", base / "train.json", base / "train.csv", base / "ckpt")
train(sys.argv[1], settings, paths, resume=sys.argv[3] == "resume")
"""


def _run_driver(data: Path, base: Path, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _DRIVER, str(data), str(base), mode], cwd=REPO, env=env)


def _steps(base: Path) -> list[dict[str, float]]:
    path = base / "ckpt" / STEPS_FILE
    return [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_kill_then_resume_takes_the_same_next_step_as_an_uninterrupted_run(
    ingested_sample: Path, tmp_path: Path
) -> None:
    clean = tmp_path / "clean"
    assert _run_driver(ingested_sample, clean, "fresh").wait(timeout=300) == 0
    killed = tmp_path / "killed"
    proc = _run_driver(ingested_sample, killed, "fresh")
    deadline = time.monotonic() + 300
    while not any(s["epoch"] == 1 and s["step"] >= 2 for s in _steps(killed)):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    state = torch.load(killed / "ckpt" / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 0, "the kill must land inside epoch 1"
    assert _run_driver(ingested_sample, killed, "resume").wait(timeout=300) == 0
    expected, got = _steps(clean), _steps(killed)
    assert [(s["epoch"], s["step"]) for s in got] == [(s["epoch"], s["step"]) for s in expected]
    first_resumed = next(i for i, s in enumerate(expected) if s["epoch"] == 1)
    assert got[first_resumed]["loss"] == pytest.approx(expected[first_resumed]["loss"], abs=1e-6)
    assert [s["loss"] for s in got] == pytest.approx([s["loss"] for s in expected], abs=1e-5)
    assert load_model(killed / "models")[1].metrics == load_model(clean / "models")[1].metrics


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_ends_with_identical_weights(ingested_sample: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "tests/train/ddp_driver.py",
            str(ingested_sample),
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert (tmp_path / "models" / "model.pt").is_file()  # rank 0 wrote it


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_train_flow_runs_under_prefect(ingested_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    from flows.train import train as train_flow

    params = tmp_path / "params.yaml"
    ckpt = tmp_path / "ckpt"
    params.write_text(
        "train:\n  recipe: cnn\n  backbone: mobilenet_v3_large\n  weights: none\n  input_size: 32\n  epochs: 2\n"
        f"  steps_per_epoch: 2\n  batch_size: 8\n  workers: 2\n  min_labels: 1\n  device: cpu\n"
        f"  metrics_file: {tmp_path / 'train.json'}\n  plots_file: {tmp_path / 'train.csv'}\n  checkpoint_dir: {ckpt}\n"
    )
    monkeypatch.setenv("FACES_PARAMS", str(params))
    result = train_flow(data_dir=str(ingested_sample), model_dir=str(tmp_path / "models"))
    assert len(result["epochs"]) == 2
    assert (tmp_path / "models" / "model.json").is_file() and (tmp_path / "train.csv").is_file()

    async def artifact_rows() -> list[dict[str, object]]:
        async with get_client() as client:
            artifacts = await client.read_latest_artifacts()
            table = next(a for a in artifacts if a.key == "train-epochs")
            data = table.data
            return json.loads(data) if isinstance(data, str) else data  # type: ignore[return-value]

    import asyncio

    rows = asyncio.run(artifact_rows())
    assert [r["epoch"] for r in rows] == [0, 1]


def test_train_command_without_data_says_what_to_do(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.train", "--data", str(tmp_path / "nothing")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no ingest output at" in proc.stderr and "faces ingest" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_batches_are_decided_per_rank_not_on_the_whole_dataset() -> None:
    from faces_core.train.loop import batches_per_rank, drops_last

    # The README's DDP bug: 67 faces > 64, but each of 2 ranks holds 34: nothing may be dropped.
    assert not drops_last(34, 64) and batches_per_rank(67, 64, 2) == 1
    assert drops_last(65, 64) and batches_per_rank(130, 64, 1) == 2
    assert batches_per_rank(130, 64, 2) == 1 and batches_per_rank(0, 64, 2) == 0


def test_an_epoch_without_a_step_is_an_error_not_an_untrained_model() -> None:
    from torch.utils.data import DataLoader

    from faces_core.inference.model import ModelMeta, build_model
    from faces_core.train.loop import NoTrainingStepsError, _Batches, train_one_epoch

    meta_heads = {"gender": list(ATTRIBUTES["gender"])}
    net = build_model(ModelMeta(backbone="mobilenet_v3_large", input_size=32, attributes=meta_heads), None)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer)
    empty = _Batches(DataLoader([], batch_size=8), torch.device("cpu"), None, ["gender"])
    with pytest.raises(NoTrainingStepsError, match="took no training step"):
        train_one_epoch(net, empty, optimizer, scheduler, TINY, {}, 0, show_progress=False)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_readme_ddp_command_takes_steps_on_both_ranks_with_identical_weights(
    ingested_sample: Path, tmp_path: Path
) -> None:
    """`torchrun --nproc_per_node=2 -m flows.train` as the README gives it, on a split whose
    per-rank share (about 65 faces) is under the batch size (96) while the whole split is over."""
    from prefect.settings import PREFECT_API_URL

    params = tmp_path / "params.yaml"
    ckpt = tmp_path / "ckpt"
    params.write_text(
        "train:\n  recipe: cnn\n  backbone: mobilenet_v3_large\n  weights: none\n  input_size: 32\n  epochs: 2\n"
        "  batch_size: 96\n  workers: 0\n  min_labels: 1\n  device: cpu\n  log_every: 1\n"
        f"  metrics_file: {tmp_path / 'train.json'}\n  plots_file: {tmp_path / 'train.csv'}\n  checkpoint_dir: {ckpt}\n"
    )
    assert len(load_face_table(ingested_sample, split="train")) > 96
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "FACES_PARAMS": str(params),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    torchrun = Path(sys.executable).with_name("torchrun")
    readme_command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "flows.train"]
    proc = subprocess.run(
        [*readme_command, "--data", str(ingested_sample), "--model-dir", str(tmp_path / "models")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {}
    for line in proc.stderr.splitlines():
        if "optimizer steps, weights sha256" in line:
            words = line.split()
            ranks[words[words.index("rank") + 1]] = (int(words[words.index("optimizer") - 1]), words[-1])
    assert set(ranks) == {"0", "1"}, proc.stderr[-3000:]
    assert ranks["0"] == ranks["1"] and ranks["0"][0] == 2  # one step an epoch on each rank, same weights
    losses = [json.loads(line)["loss"] for line in (ckpt / STEPS_FILE).read_text().splitlines()]
    assert len(losses) == 2 and all(loss > 0 for loss in losses) and losses[0] != losses[1]
    assert (tmp_path / "models" / "model.pt").is_file()


KILL_TRIALS = 10  # issue 17: SIGKILL during training, then --resume to the end


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_ends_equal_to_an_uninterrupted_run(
    ingested_sample: Path, tmp_path: Path
) -> None:
    """Ten kills at seeded random steps (any epoch, also before the first checkpoint, also while
    a checkpoint is written), each followed by --resume to the end: the step losses, the chosen
    epoch and the saved weights equal one uninterrupted run's."""
    import random

    clean = tmp_path / "clean"
    assert _run_driver(ingested_sample, clean, "fresh").wait(timeout=300) == 0
    expected = _steps(clean)
    clean_model, clean_meta = load_model(clean / "models")
    rng = random.Random(17)
    for trial in range(KILL_TRIALS):
        base = tmp_path / f"trial{trial}"
        at, delay = rng.randrange(1, len(expected)), rng.uniform(0.0, 0.3)
        proc = _run_driver(ingested_sample, base, "fresh")
        deadline = time.monotonic() + 300
        while len(_steps(base)) < at and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _run_driver(ingested_sample, base, "resume").wait(timeout=300) == 0, f"trial {trial}"
        got = _steps(base)
        assert [(s["epoch"], s["step"]) for s in got] == [(s["epoch"], s["step"]) for s in expected], trial
        assert [s["loss"] for s in got] == pytest.approx([s["loss"] for s in expected], abs=1e-5), trial
        model, meta = load_model(base / "models")
        assert meta.metrics == clean_meta.metrics, trial
        for (name, value), (_, reference) in zip(
            model.state_dict().items(), clean_model.state_dict().items(), strict=True
        ):
            assert torch.allclose(value.float(), reference.float(), atol=1e-5), (trial, name)
