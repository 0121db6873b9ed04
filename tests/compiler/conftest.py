"""Fixtures for the compiler tests: the digits data set and a CNN trained on it (session-scoped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from compiler_support import Digits, export_onnx, load_digits_split, train_digits_cnn


@pytest.fixture(scope="session")
def digits() -> Digits:
    return load_digits_split()


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Path:
    """The trained digits CNN as ONNX (input ``x`` [N, 1, 8, 8], output ``y`` [N, 10])."""
    pytest.importorskip("torch", reason="torch is needed to train the digits CNN: pip install torch==2.13.0")
    net = train_digits_cnn(digits)
    return export_onnx(net, tmp_path_factory.mktemp("digits") / "digits.onnx", (1, 1, 8, 8))


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> dict[str, Path]:
    """calibration (.npz, 200 training samples), validation (.npz with labels) and unlabelled validation."""
    base = tmp_path_factory.mktemp("digits-data")
    paths = {
        "calibration": base / "calibration.npz",
        "validation": base / "validation.npz",
        "unlabelled": base / "unlabelled.npz",
        "tiny_calibration": base / "tiny_calibration.npz",
    }
    np.savez(paths["calibration"], x=digits.x_train[:200])
    np.savez(paths["validation"], x=digits.x_test, labels=digits.y_test)
    np.savez(paths["unlabelled"], x=digits.x_test)
    # Calibration on inputs 100x too small: activation ranges that clip real data, so int8 fails.
    np.savez(paths["tiny_calibration"], x=digits.x_train[:50] * 0.01)
    return paths
