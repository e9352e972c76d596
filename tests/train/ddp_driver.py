"""Run under ``torchrun --nproc_per_node=2``: train a few steps with gloo, write each rank's digest.

Usage: torchrun --nproc_per_node=2 tests/train/ddp_driver.py DATA_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from faces_core.train.loop import train
from faces_core.train.settings import TrainPaths
from tests.train.conftest import TINY_MODEL


def main() -> None:
    data, out = sys.argv[1], Path(sys.argv[2])
    settings = replace(TINY_MODEL, steps_per_epoch=3)
    paths = TrainPaths(out / "models", out / "metrics.json", out / "plots.csv", out / "ckpt")
    result = train(data, settings, paths)
    rank = int(os.environ["RANK"])
    (out / f"rank{rank}.json").write_text(
        json.dumps({"digest": result.weights_digest, "world_size": result.world_size})
    )


if __name__ == "__main__":
    main()
