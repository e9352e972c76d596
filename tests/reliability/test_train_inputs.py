"""Training on data or checkpoints it cannot use: one line and exit 2, never a traceback or a
half-loaded model.

Cases a user would hit and nobody had tried: an ingest output with no faces, one whose every
attribute has a single class, and ``--resume`` from a truncated, garbage, foreign or empty
checkpoint (or a FIFO in its place).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from faces_cli.main import main
from faces_core.taxonomy import ATTRIBUTES
from faces_core.train.loop import CHECKPOINT_FILE, TrainInputError, train
from faces_core.train.settings import TrainPaths
from tests.train.conftest import TINY_MODEL, ingested_sample

__all__ = ["ingested_sample"]

TINY = replace(TINY_MODEL, epochs=1, steps_per_epoch=1)


def _paths(base: Path) -> TrainPaths:
    return TrainPaths(base / "models", base / "train.json", base / "train.csv", base / "ckpt")


def _copy_with(ingested: Path, out: Path, edit: Callable[[object], object]) -> Path:
    """A copy of an ingest output whose every faces part is rewritten by ``edit``."""
    shutil.copytree(ingested, out)
    for part in (out / "faces").rglob("*.parquet"):
        pq.write_table(edit(pq.read_table(part)), part)  # type: ignore[arg-type]
    return out


def test_an_ingest_output_without_faces_is_one_line(ingested_sample: Path, tmp_path: Path) -> None:
    data = _copy_with(ingested_sample, tmp_path / "data", lambda t: t.slice(0, 0))  # type: ignore[attr-defined]
    with pytest.raises(TrainInputError, match="no training faces"):
        train(data, TINY, _paths(tmp_path))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--data", str(data), "--model-dir", str(tmp_path / "m"), "--device", "cpu"])
    last = err.getvalue().strip().splitlines()[-1]  # Prefect logs the failed run above it
    assert code == 2 and last.startswith("faces train: ") and "no training faces" in last
    assert not (tmp_path / "m").exists()


def test_one_class_per_attribute_trains_no_head_and_says_so(ingested_sample: Path, tmp_path: Path) -> None:
    def one_class(table: object) -> object:
        for name in ("gender", "expression", "age_stage", "pose", "illumination", "occlusion", "makeup", "is_face"):
            column = table.column(name)  # type: ignore[attr-defined]
            filled = pc.if_else(pc.is_null(column), column, ATTRIBUTES[name][0])  # every label the same class
            table = table.set_column(table.schema.get_field_index(name), name, filled)  # type: ignore[attr-defined]
        return table

    data = _copy_with(ingested_sample, tmp_path / "data", one_class)
    with pytest.raises(TrainInputError, match=r"no attribute has \d+ training labels in 2\+ classes"):
        train(data, TINY, _paths(tmp_path))


def _checkpoint_of(ingested: Path, base: Path) -> Path:
    train(ingested, TINY, _paths(base))
    return base / "ckpt" / CHECKPOINT_FILE


BREAKERS: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p: p.write_bytes(os.urandom(2048)),
    "empty": lambda p: p.write_bytes(b""),
    "fifo": lambda p: (p.unlink(), os.mkfifo(p)),  # type: ignore[func-returns-value]
    "not-a-dict": lambda p: torch.save([1, 2, 3], p),
    "keys-missing": lambda p: torch.save({"model": {}}, p),
    "weights-of-another-model": lambda p: torch.save(
        {**torch.load(p, weights_only=True), "model": {"x": torch.zeros(1)}}, p
    ),
}


@pytest.mark.parametrize("how", list(BREAKERS))
def test_a_bad_checkpoint_with_resume_is_reported_not_loaded(ingested_sample: Path, tmp_path: Path, how: str) -> None:
    checkpoint = _checkpoint_of(ingested_sample, tmp_path)
    model = (tmp_path / "models" / "model.pt").read_bytes()
    BREAKERS[how](checkpoint)
    with pytest.raises(TrainInputError, match="delete it") as info:
        train(ingested_sample, replace(TINY, epochs=2), _paths(tmp_path), resume=True)
    assert str(checkpoint) in str(info.value) and "\n" not in str(info.value)
    assert (tmp_path / "models" / "model.pt").read_bytes() == model  # nothing trained, nothing written
