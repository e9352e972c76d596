"""The ``train`` flow: a multi-task face-attribute model on an ingest output.

Run it as ``python -m flows.train``, ``faces train`` or, once served,
``prefect deployment run train/train``. Under ``torchrun --nproc_per_node=N -m flows.train``
every rank trains with DistributedDataParallel; rank 0 runs inside the Prefect flow (and
writes every file), the other ranks run the same loop without Prefect.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from faces_core.train.settings import TrainPaths, TrainSettings
from flows import runner
from flows.params.train import train_paths, train_settings
from tasks import train as t


@flow(
    name="train",
    flow_run_name=runner.run_name("train"),
    task_runner=runner.flow_task_runner(ThreadPoolTaskRunner()),
    log_prints=False,
)
def train(
    data_dir: str | None = None,
    model_dir: str | None = None,
    epochs: int | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str | None = None,
    resume: bool = False,
    recipe: str | None = None,
) -> dict[str, Any]:
    """Train the face-attribute model; parameters left at None come from params.yaml ``train``.

    Args:
        data_dir: Ingest out_dir to train on (its ``train`` split; ``val`` for model selection).
        model_dir: Where model.pt and model.json go.
        epochs: Passes over the training faces.
        backbone: torchvision backbone name.
        weights: ``imagenet``, a local .pth path or ``none``.
        batch_size: Faces per step (per process under DDP).
        lr: Peak learning rate.
        device: ``auto``, ``cuda`` or ``cpu``.
        resume: Continue from the last checkpoint.
        recipe: ``embedding`` (heads on the face trunk, chosen by person-grouped CV) or
            ``cnn`` (fine-tune ``backbone``); None = params.yaml ``train.recipe``.

    Returns:
        Best epoch and score, model path, per-epoch stats.
    """
    data, settings, paths = train_config(
        data_dir=data_dir,
        model_dir=model_dir,
        epochs=epochs,
        backbone=backbone,
        weights=weights,
        batch_size=batch_size,
        lr=lr,
        device=device,
        recipe=recipe,
    )
    runner.show_settings("train", data_dir=data, settings=settings, paths=paths, resume=resume)
    return t.train_model(data, settings, paths, resume)


def train_config(
    data_dir: str | None = None, model_dir: str | None = None, **overrides: Any
) -> tuple[str, TrainSettings, TrainPaths]:
    """(data_dir, settings, paths) from params.yaml ``train`` with the non-None overrides."""
    data, paths = train_paths(data_dir=data_dir, model_dir=model_dir)
    return data, train_settings(**overrides), paths


if __name__ == "__main__":  # the command line lives in faces_cli
    from faces_cli.train import command

    raise SystemExit(command())
