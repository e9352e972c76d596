"""One switch for every flow: run submitted tasks in local threads (default) or on a Dask cluster.

``--task-runner dask`` runs the tasks a flow submits (ingest: parsing and every partition
shard) through ``prefect-dask``'s DaskTaskRunner; ``--dask-address tcp://host:8786`` points it
at a running scheduler, and without an address it starts a ``distributed.LocalCluster`` of
``runner.dask_workers`` processes for the run. The defaults come from params.yaml ``runner``
(not a DVC param: where tasks run does not change what they produce).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect import Flow
from prefect.task_runners import TaskRunner

from flows.params import load_params

TASK_RUNNERS = ("threads", "dask")
ENV_TASK_RUNNER = "FACES_TASK_RUNNER"
ENV_DASK_ADDRESS = "FACES_DASK_ADDRESS"

F = TypeVar("F", bound=Flow[Any, Any])


@dataclass(frozen=True)
class RunnerSettings:
    """Where a flow's submitted tasks run.

    Attributes:
        task_runner: ``threads`` (each flow's own thread pool) or ``dask``.
        dask_address: Scheduler address (``tcp://host:8786``); None starts a local cluster.
        dask_workers: Worker processes of that local cluster.
    """

    task_runner: str = "threads"
    dask_address: str | None = None
    dask_workers: int = 2

    def __post_init__(self) -> None:
        if self.task_runner not in TASK_RUNNERS:
            raise ValueError(f"task_runner must be one of {TASK_RUNNERS}, got {self.task_runner!r}")
        if self.dask_workers < 1:
            raise ValueError(f"dask_workers must be at least 1, got {self.dask_workers}")


def runner_settings(
    params: dict[str, Any] | None = None,
    task_runner: str | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> RunnerSettings:
    """RunnerSettings from params.yaml ``runner`` with the non-None overrides.

    A ``dask_address`` alone implies ``task_runner: dask``.
    """
    params = load_params() if params is None else params
    section = dict(params.get("runner") or {})
    overrides = {"task_runner": task_runner, "dask_address": dask_address, "dask_workers": dask_workers}
    section.update({k: v for k, v in overrides.items() if v is not None})
    if dask_address and task_runner is None:
        section["task_runner"] = "dask"
    unknown = set(section) - {"task_runner", "dask_address", "dask_workers"}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in params section 'runner'")
    return RunnerSettings(**section)


def make_task_runner(settings: RunnerSettings) -> TaskRunner[Any] | None:
    """The Dask task runner the settings ask for; None keeps the flow's own (threads)."""
    if settings.task_runner != "dask":
        return None
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ValueError(
            f"the dask task runner needs the optional dask packages, which are not installed ({exc}): "
            "pip install -e '.[dask]' (prefect-dask and distributed), or use --task-runner threads"
        ) from exc

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)  # type: ignore[no-any-return]
    return DaskTaskRunner(  # type: ignore[no-any-return]
        cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1, "dashboard_address": None}
    )


PIPELINE_RUN_ENV = "FACES_PIPELINE_RUN_ID"
"""Set by the ``pipeline`` flow for the ``dvc repro`` it runs: the id of that flow run."""


def stage_tags(stage: str) -> list[str]:
    """Tags of a command-line flow run: ``faces``, the stage, and the pipeline run it belongs to.

    A stage that ``dvc repro`` runs inside the ``pipeline`` deployment is a separate process
    and flow run; the ``pipeline-<id>`` tag (the pipeline run's id, first 8 hex digits) lets the
    UI's tag filter show the pipeline run and every stage run it caused together.
    """
    tags = ["faces", stage]
    parent = os.environ.get(PIPELINE_RUN_ENV)
    if parent:
        tags += ["pipeline", pipeline_tag(parent)]
    return tags


def pipeline_tag(run_id: str) -> str:
    """The tag that groups a pipeline run with the stage runs it started."""
    return f"pipeline-{run_id.replace('-', '')[:8]}"


class _Tagged:
    """A flow whose runs from the command line carry :func:`stage_tags` (deployments add their own)."""

    def __init__(self, flow: Flow[Any, Any]) -> None:
        self.flow = flow

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from prefect import tags

        with tags(*stage_tags(self.flow.name)):
            return self.flow(*args, **kwargs)


def with_runner(flow: F, settings: RunnerSettings) -> F:
    """``flow`` with the task runner the settings ask for, its runs tagged (:func:`stage_tags`)."""
    runner = make_task_runner(settings)
    chosen = flow if runner is None else flow.with_options(task_runner=runner)
    return _Tagged(chosen)  # type: ignore[return-value]


def flow_task_runner(default: TaskRunner[Any]) -> TaskRunner[Any]:
    """The task runner a flow is declared with: ``default`` unless Dask is asked for.

    Asked for by params.yaml ``runner`` or by ``FACES_TASK_RUNNER``/``FACES_DASK_ADDRESS``,
    which ``faces serve --task-runner dask`` sets: a served flow run is a new process that
    imports the flow from its module, so only what the module declares reaches it. A bad
    setting keeps ``default`` here; the command that parses flags reports it.
    """
    try:
        settings = runner_settings(
            task_runner=os.environ.get(ENV_TASK_RUNNER) or None, dask_address=os.environ.get(ENV_DASK_ADDRESS) or None
        )
        return make_task_runner(settings) or default
    except (ValueError, OSError):
        return default


def export(settings: RunnerSettings) -> None:
    """Put the settings in the environment, for the flow-run processes this one starts."""
    os.environ[ENV_TASK_RUNNER] = settings.task_runner
    if settings.dask_address:
        os.environ[ENV_DASK_ADDRESS] = settings.dask_address


def run_name(stage: str) -> Callable[[], str]:
    """A flow-run name builder: ``<stage>-<UTC time>[-<parameters given>]``.

    Prefect's default names (``shiny-swallow``) say nothing in the UI's run list; these say
    what ran, when, and with which parameters a run differed from params.yaml.
    """

    def name() -> str:
        from prefect.runtime import flow_run

        given = {
            k: v for k, v in (flow_run.parameters or {}).items() if v not in (None, False, [], "") and k != "proxy"
        }
        detail = "".join(f"-{k}={v}" for k, v in sorted(given.items()))
        return f"{stage}-{datetime.now(UTC):%Y%m%d-%H%M%S}{detail}"[:120]

    return name


_SECRET_WORDS = ("proxy", "password", "secret", "token", "credential", "key_id", "access_key")


def _shown(name: str, value: Any) -> str:
    """A setting as the settings artifact shows it: never a credential, never a URL's userinfo."""
    if any(word in name.lower() for word in _SECRET_WORDS):
        return "(set)" if value else "(not set)"
    text = str(value)
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", text)


def _rows(prefix: str, value: Any) -> list[tuple[str, str]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _rows(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, _shown(prefix, value))]


def show_settings(stage: str, **resolved: Any) -> None:
    """Publish the values this run uses as the ``<stage>-settings`` table artifact.

    A flow parameter left at None means "take it from params.yaml", and the UI's parameter
    panel can only show that None; this table shows what each one resolved to, so a run in
    the UI says which data, model and numbers it used. Credentials and proxies show as
    ``(set)``. Outside a flow run it does nothing.
    """
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    rows = [{"setting": k, "value": v} for name, obj in resolved.items() for k, v in _rows(name, obj)]
    create_table_artifact(table=rows, key=f"{stage}-settings", description=f"What this {stage} run used")
