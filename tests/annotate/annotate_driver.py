"""Annotate a folder without Prefect, announcing each committed shard (for the SIGKILL test).

``python -m tests.annotate.annotate_driver INPUT OUT`` prints ``shard <i> committed`` after
each shard's parts are in place, then ``done``.
"""

from __future__ import annotations

import sys

import torch

from faces_core.annotate.pipeline import ShardReport, annotate_folders
from tests.annotate.conftest import FAST


def main() -> int:
    torch.set_num_threads(1)
    source, out = sys.argv[1], sys.argv[2]

    def announce(index: int, report: ShardReport) -> None:
        print(f"shard {index} committed {report.files} files", flush=True)

    annotate_folders([source], out, FAST, model_dir=None, on_shard=announce)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
