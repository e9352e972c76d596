"""Run under ``torchrun --nproc_per_node=2``: train a few steps with gloo, write each rank's digest.

Usage: torchrun --nproc_per_node=2 tests/train/ddp_driver.py DATA_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from faces_core.train.loop import train
from faces_core.train.settings import TrainPaths, TrainSettings


def main() -> None:
    data, out = sys.argv[1], Path(sys.argv[2])
    settings = TrainSettings(
        backbone="mobilenet_v3_large",
        weights="none",
        input_size=32,
        epochs=1,
        steps_per_epoch=3,
        batch_size=8,
        workers=0,
        min_labels=1,
        device="cpu",
        log_every=0,
    )
    paths = TrainPaths(out / "models", out / "metrics.json", out / "plots.csv", out / "ckpt")
    result = train(data, settings, paths)
    rank = int(os.environ["RANK"])
    (out / f"rank{rank}.json").write_text(
        json.dumps({"digest": result.weights_digest, "world_size": result.world_size})
    )


if __name__ == "__main__":
    main()
