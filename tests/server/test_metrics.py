"""GET /metrics on a real server: the documented series, their types, counts that move, the token."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
#: name -> type, as docs/metrics.md lists them
DOCUMENTED = {
    "edgefleet_http_requests": "counter",
    "edgefleet_http_request_duration_seconds": "histogram",
    "edgefleet_heartbeats_received": "counter",
    "edgefleet_devices_registered": "gauge",
    "edgefleet_devices_connected": "gauge",
    "edgefleet_stage_devices": "gauge",
    "edgefleet_model_devices": "gauge",
    "edgefleet_model_requests": "gauge",
    "edgefleet_model_errors": "gauge",
    "edgefleet_model_latency_p50_seconds": "gauge",
    "edgefleet_model_latency_p99_seconds": "gauge",
    "edgefleet_model_drift_score": "gauge",
}


def scrape(server: Any, token: str) -> dict[str, Any]:
    endpoints = server.endpoints
    with httpx.Client(verify=ssl.create_default_context(cafile=endpoints.ca_cert)) as client:
        response = client.get(f"{endpoints.api_url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(families: dict[str, Any], name: str, sample: str, **labels: str) -> float:
    for s in families[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


def test_metrics_series_after_heartbeats(fleet_server: Any, operator_token: str, tmp_path: Path) -> None:
    state = fleet_server.state
    state.metrics.fleet._cache_seconds = 0.0  # every scrape recomputes (the cache is tested apart)
    before = scrape(fleet_server, operator_token)
    for name, kind in DOCUMENTED.items():
        if name in before:
            assert before[name].type == kind, name
    beats = value(before, "edgefleet_heartbeats_received", "edgefleet_heartbeats_received_total")
    devices = _devices(fleet_server, tmp_path)
    try:
        for device in devices:
            response = device.call(
                "SendHeartbeat",
                {
                    "AgentVersion": "1.0",
                    "Models": [
                        {
                            "ModelName": "det",
                            "ModelVersion": "1",
                            "ModelMetrics": [
                                {"Dimension": "det", "MetricName": "requests", "Value": 10},
                                {"Dimension": "det", "MetricName": "errors", "Value": 1},
                                {"Dimension": "det", "MetricName": "latency_p50_ms", "Value": 2.0},
                                {"Dimension": "det", "MetricName": "latency_p99_ms", "Value": 8.0},
                            ],
                        }
                    ],
                },
            )
            assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    finally:
        for device in devices:
            device.close()
    after = scrape(fleet_server, operator_token)
    for name, kind in DOCUMENTED.items():
        if name != "edgefleet_model_drift_score":  # no bucket is scored in this test
            assert name in after, name
            assert after[name].type == kind, name
    assert value(after, "edgefleet_heartbeats_received", "edgefleet_heartbeats_received_total") == beats + 2
    route = "/device/v1/SendHeartbeat"
    assert (
        value(after, "edgefleet_http_requests", "edgefleet_http_requests_total", route=route, status="2xx")
        >= 2
    )
    assert (
        value(
            after,
            "edgefleet_http_request_duration_seconds",
            "edgefleet_http_request_duration_seconds_count",
            route=route,
        )
        >= 2
    )
    # the previous scrape counted, by its route
    assert value(after, "edgefleet_http_requests", "edgefleet_http_requests_total", route="/metrics") >= 1
    fleet = {"fleet": "metrics-fleet"}
    assert value(after, "edgefleet_devices_registered", "edgefleet_devices_registered", **fleet) == 2
    assert value(after, "edgefleet_devices_connected", "edgefleet_devices_connected", **fleet) == 2
    labels = {"fleet": "metrics-fleet", "model": "det", "version": "1"}
    assert value(after, "edgefleet_model_requests", "edgefleet_model_requests", **labels) == 20
    assert value(after, "edgefleet_model_errors", "edgefleet_model_errors", **labels) == 2
    assert value(
        after, "edgefleet_model_latency_p99_seconds", "edgefleet_model_latency_p99_seconds", **labels
    ) == pytest.approx(0.008)
    # no raw paths as labels: every route label is a template or "unmatched"
    for sample in after["edgefleet_http_requests"].samples:
        assert sample.labels["route"] == "unmatched" or sample.labels["route"].startswith("/"), sample


def _devices(server: Any, tmp_path: Path) -> list[Any]:
    """Two devices of a new fleet, metrics-fleet, enrolled over HTTPS like daemons."""
    from edgefleet.server import devices, fleets
    from tests.server.server_testkit import TOKEN_TTL, enrol

    state = server.state
    db = state.db
    with db.session() as s:
        fleets.create_fleet(s, fleets.FleetSpec(name="metrics-fleet", output_location="s3://b/p"), db.now())
    with db.session() as s:
        registrations = devices.register_devices(
            s,
            "metrics-fleet",
            [devices.DeviceSpec(n) for n in ("m-dev-1", "m-dev-2")],
            state.ca,
            db.now(),
            TOKEN_TTL,
        )
        tokens = [r.enrolment_token for r in registrations]
    return [enrol(server.endpoints.api_url, t, tmp_path / str(i)) for i, t in enumerate(tokens)]


def test_metrics_needs_the_operator_token(fleet_server: Any) -> None:
    endpoints = fleet_server.endpoints
    with httpx.Client(verify=ssl.create_default_context(cafile=endpoints.ca_cert)) as client:
        response = client.get(f"{endpoints.api_url}/metrics")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHENTICATED"
        response = client.get(f"{endpoints.api_url}/metrics", headers={"Authorization": "Bearer eft_nope"})
        assert response.status_code == 401


def test_grafana_dashboard_uses_documented_series() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana" / "edgefleet.json").read_text())
    doc = (ROOT / "docs" / "metrics.md").read_text()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for name in DOCUMENTED:
        assert f"`{name}" in doc, name
    for expr in exprs:
        for name in re.findall(r"\bedgefleet_[a-z0-9_]+", expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert base in DOCUMENTED, (name, expr)
