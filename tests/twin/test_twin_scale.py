"""Slow tier: twenty twins on this machine, with the figures that say what a twin costs.

Measured and printed (not asserted: they depend on what else runs on the cores): the time until
every twin runs and until every heartbeat reached the server, resident and unique memory per twin,
threads per twin, and the CPU that twenty idle twins take together (heartbeats and polls every
5 s, the twin defaults).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
from conftest import Plane

from edgefleet.twin import TwinFleet

pytestmark = pytest.mark.slow

TWINS = 20
IDLE_SECONDS = 30.0


def test_twenty_twins_start_heartbeat_and_idle_cheaply(
    plane: Plane, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = TwinFleet(tmp_path / "twins")
    with fleet:
        began = time.monotonic()
        fleet.start(TWINS, "scale-twins", plane.url, plane.token, ca_cert=plane.ca_cert, trust_dir=keys / "trust")
        running = time.monotonic() - began
        fleet.wait_heartbeats(300)
        beating = time.monotonic() - began
        processes = fleet.processes()
        assert len(processes) == TWINS
        time.sleep(5.0)  # past start-up
        memory = [p.memory_full_info() for p in processes]
        threads = sum(p.num_threads() for p in processes)
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in processes)
        idle_from = time.monotonic()
        time.sleep(IDLE_SECONDS)
        cpu = sum(sum(p.cpu_times()[:2]) for p in processes) - cpu_before
        idle = time.monotonic() - idle_from
        assert all(s.phase == "running" for s in fleet.status(plane.op))
        pids = [p.pid for p in processes]
    assert not any(psutil.pid_exists(pid) for pid in pids)
    figures = {
        "twins": TWINS,
        "seconds_until_running": round(running, 1),
        "seconds_until_every_heartbeat": round(beating, 1),
        "rss_mib_per_twin": round(sum(m.rss for m in memory) / TWINS / 2**20, 1),
        "uss_mib_per_twin": round(sum(m.uss for m in memory) / TWINS / 2**20, 1),
        "rss_mib_total": round(sum(m.rss for m in memory) / 2**20),
        "threads_per_twin": round(threads / TWINS, 1),
        "idle_cpu_percent_of_one_core_all_twins": round(100 * cpu / idle, 1),
        "machine_load_average": psutil.getloadavg(),
    }
    with capsys.disabled():
        print(f"\ntwin fleet figures: {json.dumps(figures)}")
