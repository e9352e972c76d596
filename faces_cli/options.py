"""Flags every flow's command line shares: where the flow's tasks run (:mod:`flows.runner`)."""

from __future__ import annotations

import argparse

from flows.runner import TASK_RUNNERS, RunnerSettings, runner_settings


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """``--task-runner`` and ``--dask-address``, shared by every flow's command line."""
    group = parser.add_argument_group("where tasks run")
    group.add_argument(
        "--task-runner", choices=TASK_RUNNERS, help="threads (default) or dask (default: params.yaml runner)"
    )
    group.add_argument(
        "--dask-address",
        help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies --task-runner dask); "
        "without it, dask starts a local cluster",
    )
    group.add_argument("--dask-workers", type=int, help="worker processes of that local cluster")


def runner_from_args(args: argparse.Namespace) -> RunnerSettings:
    """RunnerSettings from parsed flags (params.yaml for those not given)."""
    return runner_settings(
        task_runner=getattr(args, "task_runner", None),
        dask_address=getattr(args, "dask_address", None),
        dask_workers=getattr(args, "dask_workers", None),
    )
