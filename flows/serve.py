"""Serve every deployment of the project: ``ingest``, ``train``, ``evaluate``,
``annotate``, ``annotate-inbox`` and ``pipeline``.

``faces serve`` (or ``python -m flows.serve``) registers the deployments with the Prefect
server in ``PREFECT_API_URL`` and runs their flow runs until Ctrl-C. Without
``PREFECT_API_URL`` it uses a server already listening on ``127.0.0.1:<serve.port>``, or
starts ``prefect server start`` there itself (its database lives in ``PREFECT_HOME``, so
deployments, schedules and past runs are still there after a restart) and prints where
the UI is. Trigger runs with ``prefect deployment run ingest/ingest`` (``train/train``,
``evaluate/evaluate``, ``annotate/annotate``, ``pipeline/pipeline``) or from the UI;
``annotate-inbox`` runs by itself every ``annotate.inbox.interval_s`` seconds.

``pipeline`` runs ``dvc repro`` (serialised with every other DVC call of ours), so a full
rebuild shows up in the UI; with ``serve.pipeline_interval_s`` it also runs on that
interval. Schedules are re-registered on every start and paused when serving stops, so no
Late runs pile up while nobody serves.

When params.yaml still points ingest at the bundled sample, this process also starts the
loopback proxy that answers the sample's image URLs and hands it to the ``ingest``
deployment as its ``proxy`` parameter, so that deployment works out of the box.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment

from flows.annotate import annotate, annotate_inbox
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.params.annotate import annotate_config
from flows.pipeline import pipeline
from flows.train import train

__all__ = ["build_deployments", "deployment_specs"]

log = logging.getLogger(__name__)


@dataclass
class DeploymentSpec:
    """One deployment ``faces serve`` serves: the flow, its name, tags and fixed settings."""

    flow: Flow[Any, Any]
    name: str
    tags: list[str]
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    interval_s: float = 0.0


def deployment_specs(
    ingest_parameters: dict[str, Any] | None = None, pipeline_interval_s: float = 0.0
) -> list[DeploymentSpec]:
    """Every deployment of the project; ``annotate-inbox`` on its params.yaml interval."""
    inbox_interval_s = annotate_config()[2].interval_s
    return [
        DeploymentSpec(
            ingest,
            "ingest",
            ["faces", "ingest"],
            "Parse TCS and IMFDB, download, validate, crop into size-bucket Parquet.",
            parameters=dict(ingest_parameters or {}),
        ),
        DeploymentSpec(train, "train", ["faces", "train"], "Train the multi-task face-attribute model."),
        DeploymentSpec(evaluate, "evaluate", ["faces", "evaluate"], "Score the model on a split of an ingest output."),
        DeploymentSpec(
            annotate,
            "annotate",
            ["faces", "annotate"],
            "Detect and label every face in folders of images and videos (Parquet, COCO).",
        ),
        DeploymentSpec(
            annotate_inbox,
            "annotate-inbox",
            ["faces", "annotate"],
            "Annotate the files that arrived in the inbox folders since the last run.",
            interval_s=inbox_interval_s,
        ),
        DeploymentSpec(
            pipeline,
            "pipeline",
            ["faces", "dvc"],
            "dvc repro: rebuild every out-of-date stage (each stage shows up as its own flow run).",
            interval_s=pipeline_interval_s,
        ),
    ]


def to_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    """The RunnerDeployment of a spec.

    Run names and the task runner are declared on the flows themselves: a served run is a
    new process that imports its flow from the module, so options set here would not reach it.
    """
    flow = spec.flow
    kwargs: dict[str, Any] = {}
    if spec.interval_s > 0:
        kwargs = {"interval": timedelta(seconds=spec.interval_s), "paused": False}
    # Sync context: to_deployment returns the deployment itself, not a coroutine.
    return cast(
        RunnerDeployment,
        flow.to_deployment(
            name=spec.name, parameters=spec.parameters, tags=spec.tags, description=spec.description, **kwargs
        ),
    )


def build_deployments(
    ingest_parameters: dict[str, Any] | None = None, pipeline_interval_s: float = 0.0
) -> list[RunnerDeployment]:
    """Every deployment ``faces serve`` serves; ``annotate-inbox`` on its params.yaml interval."""
    return [to_deployment(spec) for spec in deployment_specs(ingest_parameters, pipeline_interval_s)]


if __name__ == "__main__":  # the command line lives in faces_cli
    from faces_cli.serve import command

    raise SystemExit(command())
