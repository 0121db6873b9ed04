"""Slow tier: twenty twins on this machine, with the figures that say what a twin costs.

Measured and printed (not asserted: they depend on what else runs on the cores), for twins forked
from the zygote (the default) and, as the baseline in the same run, for twins that each start a
fresh interpreter: the time until every twin runs and until every heartbeat reached the server,
memory per twin (RSS; USS, what is the twin's alone; PSS, its fair share of what is shared, the
zygote's included), threads per twin, and the CPU that twenty idle twins take together
(heartbeats and polls every 5 s, the twin defaults).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from twin_testkit import Plane

from edgefleet.twin import TwinFleet

pytestmark = pytest.mark.slow

TWINS = 20
IDLE_SECONDS = 30.0


def measure(plane: Plane, keys: Path, workdir: Path, *, preload: bool) -> dict[str, Any]:
    fleet = TwinFleet(workdir, preload=preload)
    name = "scale-zygote" if preload else "scale-fresh"
    with fleet:
        began = time.monotonic()
        fleet.start(TWINS, name, plane.url, plane.token, ca_cert=plane.ca_cert, trust_dir=keys / "trust")
        running = time.monotonic() - began
        fleet.wait_heartbeats(300)
        beating = time.monotonic() - began
        processes = fleet.processes()
        assert len(processes) == TWINS
        zygote = [psutil.Process(fleet.zygote_pid)] if fleet.zygote_pid is not None else []
        time.sleep(5.0)  # past start-up
        memory = [p.memory_full_info() for p in processes]
        shared = [p.memory_full_info() for p in zygote]
        threads = sum(p.num_threads() for p in processes)
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in processes + zygote)
        idle_from = time.monotonic()
        time.sleep(IDLE_SECONDS)
        cpu = sum(sum(p.cpu_times()[:2]) for p in processes + zygote) - cpu_before
        idle = time.monotonic() - idle_from
        assert all(s.phase == "running" for s in fleet.status(plane.op))
        pids = [p.pid for p in processes + zygote]
    assert not any(psutil.pid_exists(pid) for pid in pids)
    mib = 2**20
    return {
        "twins": TWINS,
        "seconds_until_running": round(running, 1),
        "seconds_until_every_heartbeat": round(beating, 1),
        "rss_mib_per_twin": round(sum(m.rss for m in memory) / TWINS / mib, 1),
        "uss_mib_per_twin": round(sum(m.uss for m in memory) / TWINS / mib, 1),
        "pss_mib_per_twin_zygote_shared_out": round(sum(m.pss for m in memory + shared) / TWINS / mib, 1),
        "pss_mib_total": round(sum(m.pss for m in memory + shared) / mib),
        "threads_per_twin": round(threads / TWINS, 1),
        "idle_cpu_percent_of_one_core_all_twins": round(100 * cpu / idle, 1),
        "load_average": [round(x, 1) for x in psutil.getloadavg()],
    }


def test_twenty_twins_start_heartbeat_and_idle_cheaply(
    plane: Plane, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forked = measure(plane, keys, tmp_path / "zygote", preload=True)
    fresh = measure(plane, keys, tmp_path / "fresh", preload=False)
    with capsys.disabled():
        print(f"\ntwins forked from the zygote: {json.dumps(forked)}")
        print(f"twins as fresh interpreters: {json.dumps(fresh)}")
        print(
            f"zygote vs fresh: start {forked['seconds_until_every_heartbeat'] / fresh['seconds_until_every_heartbeat']:.2f}x, "
            f"PSS {forked['pss_mib_total'] / fresh['pss_mib_total']:.2f}x"
        )
