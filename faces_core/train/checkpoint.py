"""Checkpoints and exact resume: per-epoch seeding, RNG states, the checkpoint file, the steps log.

Every epoch's randomness is derived from ``(seed, epoch, rank)`` (:func:`seed_epoch`), and the
checkpoint written after each epoch holds the model, optimizer, scheduler and RNG states as
plain values, so a run resumed after a kill takes the same next step, to the bit on the same
machine, as one that never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from faces_core.files import open_regular, write_atomic
from faces_core.inference.model import torch_bytes
from faces_core.train.results import EpochStats, TrainInputError, _plain
from faces_core.train.settings import TrainSettings

log = logging.getLogger(__name__)

CHECKPOINT_FILE: Final = "checkpoint.pt"
STEPS_FILE: Final = "steps.jsonl"


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seed every RNG for one epoch of one rank; returns the sampler's generator."""
    value = (seed * 1_000_003 + epoch * 1_009 + rank) % 2**31
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def rng_state() -> dict[str, Any]:
    """RNG states as plain values (loadable with ``weights_only=True``)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    version, keys, pos, has_gauss, cached = state["numpy"]
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    np.random.set_state((version, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Where a run stands: the next epoch to train, the best score so far and every epoch's stats."""

    start_epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    history: list[EpochStats] = field(default_factory=list)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    # Serialised in memory first: a full disk is an OSError, not torch's RuntimeError.
    write_atomic(path, torch_bytes(obj), durable=True)


def save_checkpoint(
    path: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    progress: Progress,
    heads: Mapping[str, list[str]],
    settings: TrainSettings,
) -> None:
    """Write the state after ``epoch`` atomically (RNG states as they are now)."""
    _atomic_torch_save(
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling
            "epoch": epoch,
            "best_score": progress.best_score,
            "best_epoch": progress.best_epoch,
            "rng": rng_state(),
            "heads": heads,
            "backbone": settings.backbone,
            "history": [asdict(h) for h in progress.history],
            "settings": _plain(asdict(settings)),
        },
        path,
    )


def resume_from(
    path: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    heads: Mapping[str, list[str]],
    backbone: str,
    is_main: bool,
) -> Progress:
    """Load the checkpoint at ``path`` into the model, optimizer, scheduler and RNGs (a fresh
    start when there is none).

    Raises:
        TrainInputError: The checkpoint is unreadable or made for another run; nothing is
            trained on a half-loaded state.
    """
    if not path.exists():
        if is_main:
            log.info("no checkpoint at %s: starting from scratch", path)
        return Progress()
    state = _read_checkpoint(path)
    if state["heads"] != heads or state["backbone"] != backbone:
        raise TrainInputError(
            f"{path} was made for backbone {state['backbone']} with heads {list(state['heads'])}; "
            "this run differs: delete the checkpoint or start without --resume"
        )
    try:  # a checkpoint that does not fit ends the run with one line: it is never trained on half-loaded
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        progress = Progress(
            int(state["epoch"]) + 1,
            state["best_score"],
            state["best_epoch"],
            [EpochStats(**h) for h in state["history"]],
        )
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise TrainInputError(
            f"{path} does not fit this run ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): "
            "delete it or start without --resume"
        ) from exc
    if is_main:
        log.info("resuming after epoch %d from %s (best score %.4f)", state["epoch"], path, progress.best_score)
    return progress


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "best_score", "best_epoch", "heads")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, or a one-line TrainInputError (truncated, garbage, foreign)."""
    try:
        with open_regular(path) as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, a FIFO, a refused pickle: all say the same
        raise TrainInputError(
            f"{path} is not a usable checkpoint ({type(exc).__name__}): delete it (training starts over) or "
            "start without --resume"
        ) from exc
    missing = [k for k in (*_CHECKPOINT_KEYS, "backbone", "history") if not isinstance(state, dict) or k not in state]
    if missing:
        raise TrainInputError(f"{path} lacks {missing}: delete it or start without --resume")
    return state


def _truncate_steps(path: Path, start_epoch: int) -> None:
    """Drop step records of epochs that will be (re)run, so the log has each step once."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] < start_epoch]
    path.write_text("".join(line + "\n" for line in kept))


def _step_logger(path: Path, epoch: int) -> Callable[[int, float], None]:
    path.parent.mkdir(parents=True, exist_ok=True)

    def log_step(step: int, loss: float) -> None:
        with path.open("a") as fh:
            fh.write(json.dumps({"epoch": epoch, "step": step, "loss": loss}) + "\n")

    return log_step
