"""The agent's monitoring extensions on a real agent: live model summaries and the capture backlog."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from support import build, make_linear_onnx, start, wait_for

from edgefleet.client import AgentClient
from edgefleet.core.errors import Unimplemented
from edgefleet.monitoring import ModelSummary


@pytest.fixture
def package(tmp_path: Path, keys: Path) -> Path:
    return build(
        make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="mon-model", version="1.4"
    )


def test_live_summaries_follow_predict_traffic_in_windows(tmp_path: Path, trust: Path, package: Path) -> None:
    proc = start(tmp_path, trust, agent={"model_summaries": True})
    try:
        with AgentClient(proc.address, timeout=60) as client:
            assert {"model-summaries", "capture-statistics"} <= set(client.server_metadata().extensions)
            client.load(str(package), "mon")
            sent = np.random.default_rng(3).normal(size=(40, 1, 4)).astype(np.float32)
            for x in sent:
                client.predict("mon", {"x": x})
            (live,) = wait_for(
                lambda: [s for s in client.model_summaries() if s.calls == 40] or None, "40 summarised calls"
            )
            assert (live.name, live.model_name, live.model_version) == ("mon", "mon-model", "1.4")
            summary = ModelSummary.from_wire(live.summary)
            x = summary.inputs["x"]
            assert x.features == 4 and x.count == 40
            assert x.feature(2).get_quantile(0.0) == pytest.approx(sent[:, 0, 2].min())
            assert x.feature(2).get_quantile(1.0) == pytest.approx(sent[:, 0, 2].max())
            assert summary.outputs["y"].features == 3
            (taken,) = client.model_summaries(reset=True)  # the daemon's per-heartbeat window
            assert taken.calls == 40
            assert client.model_summaries() == []
            client.predict("mon", {"x": sent[0]})
            (fresh,) = wait_for(lambda: client.model_summaries() or None, "a new window")
            assert fresh.calls == 1 and fresh.window_start >= taken.window_start
            client.unload("mon")
            assert client.model_summaries() == []
    finally:
        proc.stop()


def test_summaries_are_off_by_default(tmp_path: Path, trust: Path) -> None:
    proc = start(tmp_path, trust)
    try:
        with AgentClient(proc.address, timeout=60) as client:
            assert "model-summaries" not in client.server_metadata().extensions
            with pytest.raises(Unimplemented, match="model summaries are off"):
                client.model_summaries()
    finally:
        proc.stop()


def test_capture_statistics_show_the_backlog(tmp_path: Path, trust: Path, package: Path) -> None:
    blocker = tmp_path / "captures"
    blocker.write_text("a file where the capture directory should be: writes fail until it is removed")
    proc = start(tmp_path, trust, capture={"buffer_size": 10, "batch_size": 1, "buffer_bytes": 10_000_000})
    try:
        with AgentClient(proc.address, timeout=60) as client:
            client.load(str(package), "mon")
            x = np.ones((1, 4), np.float32)
            for _ in range(3):
                client.capture("mon", str(uuid.uuid4()), inputs={"x": x}, outputs={"y": x[:, :3]})
            stats = wait_for(lambda: (s := client.capture_stats()).write_errors and s, "a failed write")
            assert (stats.pending, stats.buffer_size, stats.buffer_bytes) == (3, 10, 10_000_000)
            assert stats.pending_bytes > 0 and stats.oldest_pending_age_seconds >= 0
            assert stats.destination == blocker.as_uri() and stats.last_error
            blocker.unlink()
            done = wait_for(lambda: (s := client.capture_stats()).written == 3 and s, "the backlog written")
            assert (done.pending, done.pending_bytes, done.dropped) == (0, 0, 0)
    finally:
        proc.stop()
