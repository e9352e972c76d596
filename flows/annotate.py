"""The ``annotate`` and ``annotate-inbox`` flows: find, detect and label every face in folders.

Run ``faces annotate DIR... --out OUT`` (or ``python -m flows.annotate``), or serve the
deployments (``faces serve``): ``annotate/annotate`` on demand and ``annotate-inbox/annotate-inbox``
on an interval schedule over the inbox folders of params.yaml ``annotate.inbox``. Both append
Parquet parts to the output folder one shard at a time, skip files already annotated with
the same content, model and detector, and publish a table artifact of files, faces, errors
and images/s; the progress artifact follows the shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from faces_core import objstore
from faces_core.annotate import pipeline as core
from faces_core.annotate import store
from faces_core.annotate.export import write_coco
from faces_core.annotate.inbox import settled_files
from faces_core.annotate.inputs import FileJob
from faces_core.annotate.remote import files_to_annotate
from faces_core.dvcouts import owner_of
from flows import runner
from flows.params.annotate import annotate_config
from tasks import annotate as t
from tasks import objstore as o

EXPORTS = ("coco",)


def _annotate(
    inputs: Sequence[str],
    out: str,
    model_dir: str | None,
    settings: core.AnnotateSettings,
    files: Sequence[FileJob] | None,
    draw: bool,
    export: str | None,
    key: str,
    dvc_stage: bool = False,
) -> dict[str, Any]:
    """Lock the output, settle a killed run's leftovers, run the shards as tasks, publish counts.

    ``dvc_stage``: this is the DVC ``annotate`` stage writing its own output, reproducibly
    (:func:`~faces_core.annotate.pipeline.reproducible_run_id`); any other run refuses an
    output that DVC owns.
    """
    if export is not None and export not in EXPORTS:
        raise ValueError(f"unknown export {export!r}: use one of {', '.join(EXPORTS)}")
    if not dvc_stage:
        refuse_dvc_output(out)
    logger = get_run_logger()
    runner.show_settings(key, inputs=list(inputs), out=out, model_dir=model_dir, settings=settings)
    # Object-store locations (faces_core.annotate.remote): objects are listed here and fetched by
    # the shard that reads them, wherever it runs; each shard uploads its own parts, and the run
    # is committed by one manifest written after every shard has finished.
    model_url = model_dir if model_dir is not None and objstore.is_object_url(model_dir) else None
    if model_url is not None:
        model_dir = o.fetch(model_url, str(objstore.mirror(model_url)))  # its version names the run
    if files is None and any(objstore.is_object_url(i) for i in inputs):
        files = files_to_annotate(inputs, out)
    out_url = out if objstore.is_object_url(out) else None
    if out_url is not None:
        if draw:
            raise ValueError("--draw writes copies beside the outputs: give a local --out to draw")
        out = o.fetch(out_url, str(objstore.mirror(out_url)))  # what is annotated already
    draw_dir = str(Path(out) / "drawn") if draw else None
    # The pipeline is core.annotate_run, the one wiring tests and benchmarks run too; here its
    # steps are tasks.
    run = core.annotate_run(
        inputs,
        out,
        settings,
        model_dir,
        t.PrefectSteps(key),
        files,
        draw_dir,
        reproducible=dvc_stage,
        out_url=out_url,
        model_url=model_url,
    )
    total, run_id, version = run.report, run.run_id, run.model_version
    summary: dict[str, Any] = {"run_id": run_id, "out": out, "model_version": version, **core.summary(total)}
    if out_url is not None:
        t.commit_run(out_url, run_id)
        summary["out"] = objstore.shown(out_url)
    if export == "coco":
        local = out if out_url is None else o.fetch(out_url, out)
        summary["coco"] = str(write_coco(local))
        if out_url is not None:
            o.publish(local, out_url, run_id)
            summary["coco"] = f"{objstore.shown(out_url)}/coco.json"
    logger.info("annotate: %s", summary)
    t.publish_summary(key, summary)
    return summary


@flow(
    name="annotate",
    flow_run_name=runner.run_name("annotate"),
    # One shard at a time locally (the detector uses every core, or the GPU); on Dask, one per worker.
    task_runner=runner.flow_task_runner(ThreadPoolTaskRunner(max_workers=1)),  # type: ignore[arg-type]
    log_prints=False,
)
def annotate(
    inputs: list[str] | None = None,
    out: str | None = None,
    model_dir: str | None = None,
    draw: bool = False,
    export: str | None = None,
    shard_size: int | None = None,
    dvc_stage: bool = False,
    all_heads: bool | None = None,
) -> dict[str, Any]:
    """Annotate every image and video under ``inputs`` into ``out``.

    Args:
        inputs: Folders (walked recursively) or files; None = params.yaml annotate.inputs.
        out: Output folder; None = params.yaml annotate.adhoc_out (annotate.out with ``dvc_stage``).
            A DVC stage output is refused: DVC deletes what other runs write there.
        model_dir: Attribute model; None = params.yaml (detection only when it has no model).
        draw: Also write copies with boxes and labels under ``OUT/drawn``.
        export: ``coco`` also writes ``OUT/coco.json`` of the current annotations.
        shard_size: Files per shard task.
        dvc_stage: Run as the DVC ``annotate`` stage (``dvc.yaml`` passes ``--dvc-stage``): write
            annotate.out, DVC's own output, with run ids and rows taken from the inputs rather
            than the clock, so an identical ``dvc repro`` gives identical bytes.
        all_heads: Also write the heads the model withholds as unreliable (None = params.yaml).

    Returns:
        Counts of the run (files, skipped, faces, frames, errors, reasons, seconds, images_per_s).
    """
    paths, settings, _ = annotate_config(inputs=inputs, model_dir=model_dir, shard_size=shard_size, all_heads=all_heads)
    target = out or (paths["out"] if dvc_stage else paths["adhoc_out"])
    return _annotate(
        paths["inputs"], target, paths["model_dir"], settings, None, draw, export, "annotate", dvc_stage=dvc_stage
    )


@flow(
    name="annotate-inbox",
    flow_run_name=runner.run_name("annotate-inbox"),
    # One shard at a time locally (the detector uses every core, or the GPU); on Dask, one per worker.
    task_runner=runner.flow_task_runner(ThreadPoolTaskRunner(max_workers=1)),  # type: ignore[arg-type]
    log_prints=False,
)
def annotate_inbox(
    folders: list[str] | None = None,
    out: str | None = None,
    model_dir: str | None = None,
    settle_s: float | None = None,
) -> dict[str, Any]:
    """Annotate what is new in the inbox folders; files still being copied wait for the next run.

    Args:
        folders: Inbox folders; None = params.yaml annotate.inbox.folders.
        out: Output folder; None = annotate.inbox.out (data/inbox-annotations). A DVC stage
            output is refused: ``dvc repro`` or ``dvc checkout`` would delete the annotations.
        model_dir: Attribute model; None = params.yaml.
        settle_s: Seconds between the two looks at each file; None = params.yaml.

    Returns:
        The run's counts, plus ``arriving``: files left because they were still changing.
    """
    paths, settings, inbox = annotate_config(model_dir=model_dir)
    folders = list(folders or inbox.folders)
    out = out or inbox.out
    refuse_dvc_output(out)
    local = [f for f in folders if not objstore.is_object_url(f)]
    wait_s = inbox.settle_s if settle_s is None else settle_s
    settled, arriving = settled_files(local, wait_s, exclude=[out]) if local else ([], [])
    # An object is whole once it is listed (a PUT is atomic): nothing in a bucket is "arriving".
    settled += files_to_annotate([f for f in folders if objstore.is_object_url(f)], out)
    if arriving:
        get_run_logger().info(
            "%d files still arriving, left for the next run: %s", len(arriving), [j.path for j in arriving[:10]]
        )
    summary = _annotate(folders, out, paths["model_dir"], settings, settled, False, None, "annotate-inbox")
    summary["arriving"] = len(arriving)
    return summary


class DvcOutputError(ValueError):
    """The output folder belongs to DVC; writing there would be undone by ``dvc repro``/``checkout``."""


def refuse_dvc_output(out: str) -> None:
    """Refuse an output folder that is (or holds) a DVC output, before anything is written.

    Raises:
        DvcOutputError: Naming the owner and a folder to use instead.
    """
    if objstore.is_remote(out):
        return  # DVC outputs are local folders
    owner = owner_of(out, store.OUTPUT_ENTRIES)
    if owner is not None:
        raise DvcOutputError(
            f"{out} is inside {owner.path} ({owner.owner}, dvc.yaml), which DVC owns: `dvc repro` and "
            "`dvc checkout` delete whatever other runs write there. Annotate into a folder outside DVC's outputs "
            "(--out data/annotated, or annotate.adhoc_out / annotate.inbox.out in params.yaml) and version it with "
            "`dvc add` if you want it tracked; `dvc repro annotate` writes the stage's own output"
        )


if __name__ == "__main__":  # the command line lives in faces_cli
    from faces_cli.annotate import command

    raise SystemExit(command())
