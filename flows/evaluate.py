"""The ``evaluate`` flow: score a trained model on a split of any ingest output.

Run it as ``python -m flows.evaluate``, ``faces evaluate`` or, once served,
``prefect deployment run evaluate/evaluate``. Parameters left at None come from params.yaml
``evaluate``. Writes ``metrics/eval.json`` and ``plots/confusion/<attribute>.png|.csv``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows import runner
from flows.params.evaluate import evaluate_config
from tasks import evaluate as t


@flow(
    name="evaluate",
    flow_run_name=runner.run_name("evaluate"),
    task_runner=runner.flow_task_runner(ThreadPoolTaskRunner()),
    log_prints=False,
)
def evaluate(
    model_dir: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    metrics_file: str | None = None,
    plots_dir: str | None = None,
    min_labels: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Score the model in ``model_dir`` on ``split`` of ``data_dir``.

    Args:
        model_dir: Directory of model.pt + model.json (what ``faces train`` writes).
        data_dir: Any ingest output directory (holds ``faces/``), e.g. new actors ingested apart.
        split: ``train``, ``val``, ``test`` or ``all``.
        metrics_file: Where eval.json goes.
        plots_dir: Where ``<attribute>.png`` and ``.csv`` confusion matrices go.
        min_labels: Fewer labels of an attribute are reported as ``too_few_labels``.
        batch_size: Faces per forward pass.
        workers: DataLoader processes.
        device: ``auto``, ``cuda`` or ``cpu``.

    Returns:
        What eval.json holds.
    """
    paths, settings = evaluate_config(
        model_dir=model_dir,
        data_dir=data_dir,
        split=split,
        metrics_file=metrics_file,
        plots_dir=plots_dir,
        min_labels=min_labels,
        batch_size=batch_size,
        workers=workers,
        device=device,
    )
    runner.show_settings("evaluate", paths=paths, settings=settings)
    return t.evaluate_model(paths, settings)


if __name__ == "__main__":  # the command line lives in faces_cli
    from faces_cli.evaluate import command

    raise SystemExit(command())
