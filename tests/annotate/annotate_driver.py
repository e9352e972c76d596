"""Annotate a folder without Prefect, announcing each committed shard (for the SIGKILL test).

``python -m tests.annotate.annotate_driver INPUT OUT [--inbox]`` prints ``shard <i> committed``
after each shard's parts are in place, then ``done`` (``--inbox``: only the files that did not
change between two looks 0.3 s apart, as the annotate-inbox flow; ``done arriving <n>``).
"""

from __future__ import annotations

import sys

import torch

from faces_core.annotate.inbox import settled_files
from faces_core.annotate.pipeline import ShardReport, annotate_folders
from tests.annotate.conftest import FAST


def main() -> int:
    torch.set_num_threads(1)
    source, out = sys.argv[1], sys.argv[2]
    inbox = "--inbox" in sys.argv[3:]

    def announce(index: int, report: ShardReport) -> None:
        print(f"shard {index} committed {report.files} files", flush=True)

    if inbox:  # as the annotate-inbox flow: only files that stayed the same between two looks
        settled, arriving = settled_files([source], 0.3, exclude=[out])
        annotate_folders([source], out, FAST, model_dir=None, files=settled, on_shard=announce)
        print(f"done arriving {len(arriving)}", flush=True)
        return 0
    annotate_folders([source], out, FAST, model_dir=None, on_shard=announce)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
