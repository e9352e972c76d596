"""Prefect task of the pipeline flow: one ``dvc repro`` under the project's DVC lock."""

from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from faces_core import dvcrepo


@task(name="dvc-repro", cache_policy=NO_CACHE)
def dvc_repro(
    root: str, targets: list[str], force: bool, wait_s: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run ``dvc repro`` (serialised with every other DVC call of ours), logging each line.

    ``env``: variables added to this process's environment for the stages DVC runs.
    """
    logger = get_run_logger()
    args = ["repro", *(["--force"] if force else []), *targets]
    logger.info("dvc %s (in %s)", " ".join(args), root)
    return dvcrepo.run_dvc(
        args, root=root, wait_s=wait_s, on_line=lambda line: logger.info("%s", line), env={**os.environ, **(env or {})}
    )
