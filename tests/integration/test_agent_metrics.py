"""The agent's own Prometheus ``/metrics`` (docs/metrics.md, "Agent"): a real agent process with
``agent.metrics_address`` set, real Predict calls, a real HTTP scrape parsed with prometheus-client's
parser; off by default (nothing listens); a bad address and a missing extra are clear errors.
The agent logs JSON here (``log_format = "json"``): every line of its log is checked too."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import REPO, build_null, running_agent, short_socket_dir, write_native_config

from edgefleet.core.errors import Code, EdgefleetError, FailedPrecondition, InvalidArgument

pytest.importorskip("prometheus_client", reason="the agent's /metrics needs the metrics extra")

from prometheus_client.parser import text_string_to_metric_families

GOOD, BAD = 5, 3


def json_log(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"agent log line is not JSON: {line!r}") from None
        assert entry["component"] == "agent", line
        assert (entry["device"], entry["fleet"]) == ("test-device", "test-fleet"), line
        assert {"time", "level", "event", "logger"} <= set(entry), line
        entries.append(entry)
    return entries


def scrape(url: str) -> dict[str, Any]:
    """name -> {labels tuple -> value} for every sample of a scrape."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_count_what_the_agent_served(tmp_path: Path, keys: Path) -> None:
    from edgefleet.client import AgentClient

    good = build_null(keys, tmp_path / "pkg", name="digits", version="2.1", memory_bytes=3 << 20)
    bad = build_null(keys, tmp_path / "pkg-bad", name="broken", version="0.9", fail=True)
    with running_agent(
        tmp_path,
        keys / "trust",
        agent={"metrics_address": "127.0.0.1:0", "log_format": "json"},
        capture={"push_period_seconds": 3600, "batch_size": 10},  # captures stay in the spool
    ) as agent:
        (metrics,) = [e for e in json_log(agent.log()) if e["event"].startswith("metrics on http://")]
        url = metrics["event"].removeprefix("metrics on ")
        x = np.ones((1, 4), dtype=np.float32)
        with AgentClient(agent.address) as client:
            client.load(good, "digits-blue")
            client.load(bad, "broken")
            for _ in range(GOOD):
                client.predict("digits-blue", {"x": x})
            for _ in range(BAD):
                with pytest.raises(EdgefleetError, match="null model configured to fail"):
                    client.predict("broken", {"x": x})
            for _ in range(2):
                client.capture("digits-blue", inputs=[x], outputs=[x])
            samples = scrape(url)
            (stats,) = client.model_stats("digits-blue")
        assert agent.stop() == 0
        json_log(agent.log())  # every line, the shutdown's too

    blue = (("model", "digits"), ("name", "digits-blue"), ("version", "2.1"))
    broken = (("model", "broken"), ("name", "broken"), ("version", "0.9"))
    assert samples["edgefleet_agent_predict_requests_total"] == {blue: GOOD, broken: BAD}
    assert stats.request_count == GOOD  # the agent's own statistics say the same
    assert samples["edgefleet_agent_predict_errors_total"] == {blue: 0, broken: BAD}
    assert samples["edgefleet_agent_predict_latency_seconds_count"] == {blue: GOOD, broken: 0}
    assert samples["edgefleet_agent_predict_latency_seconds_sum"][blue] > 0
    buckets = samples["edgefleet_agent_predict_latency_seconds_bucket"]
    assert buckets[(("le", "+Inf"), *blue)] == GOOD
    blue_buckets = sorted(
        (float(dict(k)["le"]), v) for k, v in buckets.items() if dict(k)["name"] == "digits-blue"
    )
    assert [v for _, v in blue_buckets] == sorted(v for _, v in blue_buckets)  # cumulative
    assert samples["edgefleet_agent_models_loaded"] == {(): 2}
    assert samples["edgefleet_agent_model_memory_bytes"][blue] == stats.memory_bytes >= 3 << 20
    assert samples["edgefleet_agent_models_memory_bytes"][()] >= stats.memory_bytes
    assert samples["edgefleet_agent_models_memory_budget_bytes"][()] > 0
    assert samples["edgefleet_agent_process_resident_memory_bytes"][()] > 10 << 20
    assert samples["edgefleet_agent_capture_backlog_records"] == {(): 2}
    assert samples["edgefleet_agent_capture_backlog_bytes"][()] > 0
    assert samples["edgefleet_agent_capture_backlog_oldest_age_seconds"][()] >= 0
    assert samples["edgefleet_agent_capture_written_total"] == {(): 0}
    assert samples["edgefleet_agent_capture_dropped_total"] == {(): 0}
    (info,) = samples["edgefleet_agent_info"]
    assert dict(info)["device"] == "test-device"
    # every series is documented (the process collector's under its RSS row)
    doc = (REPO / "docs" / "metrics.md").read_text()
    for name in samples:
        assert name.startswith("edgefleet_agent_"), name
        if name.startswith("edgefleet_agent_process_"):
            assert f"`_{name.removeprefix('edgefleet_agent_process_')}`" in doc or f"`{name}`" in doc, name
            continue
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert f"`{base}`" in doc, name
    # stopped with the agent: nothing listens any more
    with pytest.raises(OSError, match="refused"):
        urllib.request.urlopen(url, timeout=10)


def test_metrics_are_off_by_default(tmp_path: Path, trust: Path) -> None:
    with running_agent(tmp_path, trust) as agent:
        pid = agent.proc.pid
        listening = _tcp_listeners_of(pid)
        assert "metrics on" not in agent.log()
    assert listening == set(), f"the agent listens on TCP ports {listening} with metrics off"


def _tcp_listeners_of(pid: int) -> set[str]:
    """The TCP addresses ``pid`` listens on (from /proc: its socket inodes against the listen table)."""
    proc = Path(f"/proc/{pid}")
    inodes = set()
    for fd in (proc / "fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = set()
    for table in ("tcp", "tcp6"):
        for line in (proc / "net" / table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.add(fields[1])
    return listening


def test_the_cli_flag_sets_the_address_and_a_bad_one_is_refused(tmp_path: Path, trust: Path) -> None:
    config = write_native_config(
        tmp_path / "agent.json", trust_dir=trust, data_dir=tmp_path / "d", capture_dir=tmp_path / "c"
    )
    sock = short_socket_dir() / "agent.sock"
    bad = subprocess.run(
        [sys.executable, "-m", "edgefleet", "agent", "run", "-a", f"unix://{sock}", "-c", str(config),
         "-f", "--metrics-address", "localhost"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT: metrics_address must be host:port" in bad.stderr
    assert "'localhost'" in bad.stderr

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        taken = subprocess.run(
            [sys.executable, "-m", "edgefleet", "agent", "run", "-a", f"unix://{sock}", "-c", str(config),
             "-f", "--metrics-address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
    finally:
        busy.close()
    assert taken.returncode == 1
    assert f"FAILED_PRECONDITION: cannot serve metrics on 127.0.0.1:{port}" in taken.stderr
    assert not sock.exists()  # the agent that could not serve its metrics stopped and cleaned up


def test_a_bad_address_in_the_config_is_refused() -> None:
    from edgefleet.agent.config import from_native

    for bad in ("9464", ":9464", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(InvalidArgument, match="metrics_address must be host:port") as caught:
            from_native({"device": {"name": "d", "fleet": "f"}, "agent": {"metrics_address": bad}})
        assert caught.value.code is Code.INVALID_ARGUMENT
    config = from_native({"device": {"name": "d", "fleet": "f"}, "agent": {"metrics_address": "[::1]:9464"}})
    assert config.metrics_address == "[::1]:9464"


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.agent.metrics import require_prometheus_client

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an install without it sees
    with pytest.raises(FailedPrecondition, match=r"pip install 'edgefleet\[metrics\]'") as caught:
        require_prometheus_client()
    assert caught.value.code is Code.FAILED_PRECONDITION


def test_an_agent_that_cannot_start_says_why_in_json(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nname = "d"\nfleet = "f"\n[agent]\nmetrics_address = "nowhere"\n')
    sock = short_socket_dir() / "agent.sock"
    failed = subprocess.run(
        [sys.executable, "-m", "edgefleet", "agent", "run", "-a", f"unix://{sock}", "-c", str(config),
         "--log-format", "json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert failed.returncode == 1
    (entry,) = [json.loads(line) for line in failed.stderr.splitlines()]
    assert entry["component"] == "agent"
    assert entry["level"] == "ERROR"
    assert entry["event"].startswith("edgefleet: error: INVALID_ARGUMENT: metrics_address must be host:port")


def test_the_agent_dashboard_uses_documented_series() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana" / "edgefleet-agent.json").read_text())
    doc = (REPO / "docs" / "metrics.md").read_text()
    agent_doc = doc[doc.index("## Agent metrics") :]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    for expr in exprs:
        for name in re.findall(r"\bedgefleet_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert f"`{base}`" in agent_doc, (name, expr)
