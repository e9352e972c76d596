"""The ``pipeline`` flow: ``dvc repro`` of the whole project, so a full rebuild shows in the UI.

Run it as ``python -m flows.pipeline`` or, once served, ``prefect deployment run
pipeline/pipeline``. Each stage that DVC runs is itself a flow run (``python -m
flows.<stage>``) reporting to the same Prefect server, so the UI shows the pipeline run
and, beside it, the ingest, train and evaluate runs it caused. DVC calls are serialised by
a file lock (see :mod:`faces_core.dvcrepo`): a second pipeline run waits for the first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run as prefect_flow_run

from faces_core import dvcrepo
from flows import runner
from flows.params import load_params
from tasks import pipeline as t

DEFAULT_LOCK_WAIT_S = 600.0


def lock_wait_s(params: dict[str, Any] | None = None) -> float:
    """params.yaml ``serve.dvc_lock_wait_s``: how long a DVC call waits for another one."""
    params = load_params() if params is None else params
    return float((params.get("serve") or {}).get("dvc_lock_wait_s", DEFAULT_LOCK_WAIT_S))


def _metrics_table(root: Path, params: dict[str, Any]) -> list[str]:
    """Markdown rows of the headline metrics the stages wrote (missing files are skipped)."""
    rows = []
    for stage, key in (("train", "metrics_file"), ("evaluate", "metrics_file")):
        path = root / str((params.get(stage) or {}).get(key, f"metrics/{stage}.json"))
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for name in ("best_score", "best_epoch", "score"):
            if isinstance(data.get(name), int | float):
                rows.append(f"| {stage} | {name} | {data[name]:.4g} |")
    return rows


def stage_runs_markdown() -> str:
    """Links to the flow runs of the stages this pipeline run caused (found by their tag).

    Each stage runs in its own process under ``dvc repro``, so Prefect does not know it as a
    subflow; the ``pipeline-<id>`` tag (:func:`flows.runner.stage_tags`) ties them together.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    run_id = prefect_flow_run.get_id()
    if not run_id:
        return ""
    tag = runner.pipeline_tag(str(run_id))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])), sort=FlowRunSort.START_TIME_ASC
        )
    if not runs:
        return ""
    lines = ["", f"Stage runs (tag `{tag}`):", "", "| run | state |", "|---|---|"]
    lines += [f"| [{r.name}](/runs/flow-run/{r.id}) | {r.state_name or '-'} |" for r in runs]
    return "\n".join(lines) + "\n"


def report_markdown(rc: int, ran: list[str], root: Path, params: dict[str, Any]) -> str:
    """The ``pipeline-repro`` artifact: outcome, stages run, headline metrics, where to look."""
    outcome = "succeeded" if rc == 0 else f"failed (dvc exit status {rc})"
    lines = [f"# dvc repro {outcome}", ""]
    lines.append("Stages run: " + (", ".join(f"`{s}`" for s in ran) if ran else "none (everything up to date)"))
    metrics = _metrics_table(root, params)
    if metrics:
        lines += ["", "| stage | metric | value |", "|---|---|---:|", *metrics]
    lines += ["", "Compare with the last commit: `dvc metrics diff`, `dvc params diff`; plots: `dvc plots show`."]
    return "\n".join(lines) + "\n"


@flow(name="pipeline", flow_run_name=runner.run_name("pipeline"), log_prints=False)
def pipeline(targets: list[str] | None = None, force: bool = False, root: str | None = None) -> dict[str, Any]:
    """Reproduce the DVC pipeline (all stages, or ``targets`` and what they depend on).

    Args:
        targets: Stage names to reproduce (``["train"]``); None or [] = every stage.
        force: Rerun even the stages DVC finds up to date.
        root: The repository root (where dvc.yaml is); None = the serving process's directory.

    Returns:
        ``{"returncode", "stages_run"}``.

    Raises:
        RuntimeError: dvc repro failed; the run's log holds its output.
    """
    root_path = Path(root or ".")
    params = load_params(root_path / "params.yaml")
    # Each stage DVC runs is a flow run of its own process: the variable tells it which pipeline
    # run started it, so it carries that run's tag (flows.runner.stage_tags).
    run_id = prefect_flow_run.get_id()
    env = {runner.PIPELINE_RUN_ENV: str(run_id)} if run_id else {}
    rc, output = t.dvc_repro(str(root_path), list(targets or []), force, lock_wait_s(params), env)
    ran = dvcrepo.stages_run(output)
    markdown = report_markdown(rc, ran, root_path, params) + stage_runs_markdown()
    create_markdown_artifact(markdown=markdown, key="pipeline-repro")
    if rc != 0:
        raise RuntimeError(f"dvc repro failed with exit status {rc}; its output is in this run's log")
    return {"returncode": rc, "stages_run": ran}


if __name__ == "__main__":  # the command line lives in faces_cli
    from faces_cli.pipeline import command

    raise SystemExit(command())
