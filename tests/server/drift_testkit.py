"""Drift test data shared by the drift and alert tests: a digits-like input table, a fixed linear
"model", summaries and heartbeat windows of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from edgefleet.core import deviceplane as dp
from edgefleet.monitoring import ModelSummary

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
#: a digits-like table: 8 features, values 0..16
FEATURES = 8


def digits(rows: int, *, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(8.0 + shift, 3.0, size=(rows, FEATURES)), 0, 16 + shift).astype(np.float32)


def classify(x: np.ndarray) -> np.ndarray:
    """A fixed linear "model": scores of 4 classes."""
    weights = np.random.default_rng(42).normal(size=(FEATURES, 4)).astype(np.float32)
    return ((x - 8.0) @ weights).astype(np.float32)


def summary_of(x: np.ndarray) -> ModelSummary:
    summary = ModelSummary.empty()
    summary.update({"x": x}, ["y"], [classify(x)], calls=x.shape[0])
    return summary


def window(
    start: datetime, *, x: np.ndarray | None = None, model: str = "digits", version: str = "1"
) -> dp.SummaryWindow:
    summary = summary_of(digits(50) if x is None else x)
    return dp.SummaryWindow(
        model, version, start, start + timedelta(minutes=5), summary.calls, summary.to_wire()
    )


def heartbeat_body(*windows: dp.SummaryWindow) -> dict[str, Any]:
    beat = dp.Heartbeat(agent_version="1.0", taken_at=T0, summaries=tuple(windows))
    return beat.to_wire()
