"""Drift alerts on a real control plane (SQLite, and PostgreSQL when reachable): simulated devices
send summary windows with their heartbeats, the periodic work scores complete buckets into the
stored time series, opens and clears alert events and posts webhooks to a real HTTP server on
loopback. The server's clock is a fake the tests move; the periodic work is driven by hand."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from drift_testkit import digits, heartbeat_body, summary_of, window
from server_testkit import DeviceClient, FakeClock, build_test_package, enrol, migrate, scratch_pg_database
from sqlalchemy import select

from edgefleet.cli import main as cli_main
from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.server.db.schema import DriftBucketRow, DriftScoreRow, Fleet, WebhookDeliveryRow
from edgefleet.server.jobs import MonitoringRound, run_monitoring

SECRET = "s3cret-for-tests"
HOUR = 3600
GRACE = 300


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook endpoint: records every POST; a path's first ``fail[path]`` attempts of each
    delivery are answered 500."""

    url: str
    received: list[Received] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    #: a POST to such a path is answered only once its event is set
    hold: dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 60.0) -> list[Received]:
        """The posts to ``path`` once there are ``count`` of them (or what came within ``timeout``)."""
        with self.arrived:
            self.arrived.wait_for(lambda: len([r for r in self.received if r.path == path]) >= count, timeout)
            return [r for r in self.received if r.path == path]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Receiver]:
    """The webhook receiver's HTTP server, on a loopback port for the module."""
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                delivery = self.headers.get("X-Edgefleet-Delivery", "")
                tries = sum(
                    1
                    for r in state.received
                    if r.path == self.path and r.headers.get("X-Edgefleet-Delivery") == delivery
                )
                state.received.append(Received(self.path, dict(self.headers), body))
                status = 500 if tries < state.fail.get(self.path, 0) else 200
                state.arrived.notify_all()
                hold = state.hold.get(self.path)
            if hold is not None:
                hold.wait(60)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def receiver(endpoint: Receiver) -> Receiver:
    """The webhook receiver, with nothing received yet."""
    with endpoint.lock:
        endpoint.received.clear()
        endpoint.fail.clear()
        endpoint.hold.clear()
    return endpoint


@dataclass
class AlertServer:
    running: Any
    op: Any
    clock: FakeClock
    workdir: Path
    token: str

    @property
    def db(self) -> Any:
        return self.running.state.db

    def devices(self, fleet: str, count: int) -> list[DeviceClient]:
        self.op.create_fleet(fleet, f"s3://bucket/{fleet}")
        names = [{"DeviceName": f"{fleet}-{i}"} for i in range(count)]
        registered = self.op.register_devices(fleet, names)
        return [
            enrol(self.running.endpoints.api_url, r["EnrolmentToken"], self.workdir / r["DeviceName"])
            for r in registered
        ]

    def monitor(self) -> MonitoringRound:
        return run_monitoring(self.running.state)

    def bucket(self) -> datetime:
        """The start of the bucket the clock is in."""
        now = self.clock.current
        return now.replace(minute=0, second=0, microsecond=0)

    def complete(self, bucket: datetime) -> None:
        """Move the clock to when ``bucket`` counts as complete."""
        self.clock.current = bucket + timedelta(seconds=HOUR + GRACE)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Path
) -> Iterator[AlertServer]:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing, WebhookPolicy
    from edgefleet.server.runner import start_in_thread

    def run(database_url: str | None) -> Iterator[AlertServer]:
        # in the past, so that certificates issued by the fake clock as it moves on stay valid in real time
        clock = FakeClock(datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3))
        config = ServerConfig(
            data_dir=tmp_path_factory.mktemp("server"),
            port=0,
            device_port=0,
            trust_dir=keys / "trust",
            timing=Timing(
                shutdown_grace=1, drift_bucket=HOUR, drift_bucket_grace=GRACE, drift_lookback=86400
            ),
            webhooks=WebhookPolicy(
                timeout=10, first_backoff=5, max_backoff=60, jitter=0.5, give_up_after=600
            ),
            database_url=database_url,
        )
        running = start_in_thread(config, clock=clock)
        db = running.state.db
        with db.session() as session:
            token = tokens.create_token(session, "ops-alerts", db.now())
        endpoints = running.endpoints
        op = FleetClient(ClientConfig(endpoints.api_url, token, Path(endpoints.ca_cert)))
        packages = tmp_path_factory.mktemp("packages")
        op.upload_package(build_test_package(keys, packages, "digits", "1"))
        op.put_baseline("digits", "1", summary_of(digits(2000, seed=1)).to_wire())
        try:
            yield AlertServer(running, op, clock, tmp_path_factory.mktemp("devices"), token)
        finally:
            op.close()
            running.stop()

    if request.param == "sqlite":
        yield from run(None)
    else:
        with scratch_pg_database("edgefleet_alerts") as url:
            yield from run(url)


def send_windows(devices: list[DeviceClient], bucket: datetime, *, shift: float, seed: int) -> None:
    """Three 5-minute windows of 200 rows per device, inside ``bucket``."""
    for d, device in enumerate(devices):
        for i in range(3):
            x = digits(200, shift=shift, seed=seed + 10 * d + i)
            body = heartbeat_body(window(bucket + timedelta(minutes=5 * i), x=x))
            response = device.call("SendHeartbeat", body)
            assert response.status_code == 200, response.text


def signed(received: Received) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), received.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.headers.get("X-Edgefleet-Signature", ""), expected)


def close_all(devices: list[DeviceClient]) -> None:
    for device in devices:
        device.close()


def test_a_shifted_stream_opens_an_alert_and_fires_the_webhook_an_unshifted_one_does_not(
    server: AlertServer, receiver: Receiver
) -> None:
    calm, shifted = server.devices("calm", 3), server.devices("shifted", 3)
    try:
        for fleet in ("calm", "shifted"):
            rule = server.op.put_alert_rule(
                "digits",
                f"watch-{fleet}",
                {
                    "DeviceFleetName": fleet,
                    "MaxPsi": 0.25,
                    "Webhook": {"Url": f"{receiver.url}/hook-{fleet}", "Secret": SECRET},
                },
            )
            assert rule["Webhook"] == {"Url": f"{receiver.url}/hook-{fleet}", "HasSecret": True}
            assert SECRET not in json.dumps(rule)
        bucket = server.bucket()
        send_windows(calm, bucket, shift=0.0, seed=100)
        send_windows(shifted, bucket, shift=4.0, seed=200)

        # the bucket is not complete yet: nothing is scored, nothing fires
        server.clock.current = bucket + timedelta(minutes=30)
        assert server.monitor().buckets_scored == 0
        server.complete(bucket)
        round_ = server.monitor()
        assert round_.buckets_scored == 2
        opened = [c for c in round_.alerts if c.kind == "alert.opened"]
        assert opened and {c.fleet for c in opened} == {"shifted"}
        assert {c.score_kind for c in opened} == {"PSI"} and all(c.score > 0.25 for c in opened)

        assert receiver.at("/hook-calm") == []
        posts = receiver.at("/hook-shifted")
        assert len(posts) == len(opened) == round_.webhooks.delivered
        for post in posts:
            assert signed(post)
            body = post.payload
            assert body["Type"] == "alert.opened" and post.headers["X-Edgefleet-Event"] == "alert.opened"
            assert (body["ModelName"], body["ModelVersion"], body["DeviceFleetName"]) == (
                "digits",
                "1",
                "shifted",
            )
            assert body["ScoreKind"] == "PSI" and body["Score"] > body["Threshold"] == 0.25
            assert body["BucketStart"] == bucket.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert body["ClearedAt"] is None and body["Feature"].startswith(("input x[", "output y["))
        assert {p.payload["Feature"] for p in posts} == {c.feature for c in opened}

        # the stored series: one bucket per fleet, the report of the complete bucket answers from it
        with server.db.session() as s:
            rows = s.scalars(select(DriftBucketRow).where(DriftBucketRow.bucket_start == bucket)).all()
            assert sorted((r.windows, r.devices, r.calls) for r in rows) == [(9, 3, 1800)] * 2
            stored_max = max(
                s.scalars(
                    select(DriftScoreRow.score).where(
                        DriftScoreRow.bucket_start == bucket, DriftScoreRow.kind == "PSI"
                    )
                )
            )
        report = server.op.fleet_drift("shifted", "digits", version="1", since=bucket.isoformat())
        (stored,) = report["Buckets"]
        assert (stored["Windows"], stored["Devices"], stored["Calls"]) == (9, 3, 1800)
        assert stored["MaxPsi"] == stored_max and report["Features"][0]["Psi"] == stored_max

        # another round with nothing new: no second event, no second webhook
        again = server.monitor()
        assert again.alerts == [] and again.buckets_scored == 0
        assert len(receiver.at("/hook-shifted")) == len(posts)
        events = list(server.op.list_alert_events("digits", fleet="shifted", open_only=True))
        assert len(events) == len(opened)
        assert list(server.op.list_alert_events("digits", fleet="calm")) == []

        # the next bucket is back to normal: every event clears, alert.cleared is posted
        bucket = bucket + timedelta(hours=1)
        send_windows(shifted, bucket, shift=0.0, seed=300)
        server.complete(bucket)
        cleared = server.monitor()
        assert sorted(c.feature for c in cleared.alerts if c.kind == "alert.cleared") == sorted(
            c.feature for c in opened
        )
        clear_posts = receiver.at("/hook-shifted")[len(posts) :]
        assert len(clear_posts) == len(opened) and all(signed(p) for p in clear_posts)
        for post in clear_posts:
            body = post.payload
            assert body["Type"] == "alert.cleared" and body["ClearedAt"] is not None
            assert body["Score"] <= 0.25 < body["OpenedScore"]
        assert list(server.op.list_alert_events("digits", fleet="shifted", open_only=True)) == []
        history = list(server.op.list_alert_events("digits", fleet="shifted"))
        assert len(history) == len(opened) and all(e["ClearedAt"] for e in history)
    finally:
        close_all(calm + shifted)


def test_a_failing_webhook_endpoint_gets_the_delivery_on_the_third_attempt(
    server: AlertServer, receiver: Receiver
) -> None:
    receiver.fail["/hook-flaky"] = 2
    devices = server.devices("flaky", 2)
    try:
        server.op.put_alert_rule(
            "digits",
            "flaky",
            {"DeviceFleetName": "flaky", "MaxPsi": 0.25, "Webhook": {"Url": f"{receiver.url}/hook-flaky"}},
        )
        bucket = server.bucket()
        send_windows(devices, bucket, shift=4.0, seed=400)
        server.complete(bucket)
        first = server.monitor()
        events = len([c for c in first.alerts if c.kind == "alert.opened"])
        assert events and (first.webhooks.delivered, first.webhooks.retrying) == (0, events)
        with server.db.session() as s:
            rows = s.scalars(
                select(WebhookDeliveryRow).where(WebhookDeliveryRow.url.endswith("/hook-flaky"))
            ).all()
            assert all(r.attempts == 1 and r.last_error.startswith("HTTP 500") for r in rows)
            # the first retry comes after first_backoff shortened by up to half (jitter)
            assert all(
                timedelta(seconds=2.5) <= r.next_attempt_at - server.clock.current <= timedelta(seconds=5)
                for r in rows
            )
        # not due yet: nothing is posted
        assert server.monitor().webhooks == type(first.webhooks)()
        assert len(receiver.at("/hook-flaky")) == events
        server.clock.advance(5)
        second = server.monitor()
        assert (second.webhooks.delivered, second.webhooks.retrying) == (0, events)
        server.clock.advance(10)
        third = server.monitor()
        assert (third.webhooks.delivered, third.webhooks.retrying) == (events, 0)
        posts = receiver.at("/hook-flaky")
        assert len(posts) == 3 * events
        assert "X-Edgefleet-Signature" not in posts[0].headers  # no secret, no signature
        with server.db.session() as s:
            rows = s.scalars(
                select(WebhookDeliveryRow).where(WebhookDeliveryRow.url.endswith("/hook-flaky"))
            ).all()
            assert all(
                r.attempts == 3 and r.delivered_at is not None and r.next_attempt_at is None for r in rows
            )
        assert server.monitor().webhooks == type(first.webhooks)()
    finally:
        server.op.delete_alert_rule("digits", "flaky")
        close_all(devices)


def test_a_delivery_that_keeps_failing_is_given_up(server: AlertServer, receiver: Receiver) -> None:
    receiver.fail["/hook-down"] = 1000
    devices = server.devices("down", 1)
    try:
        server.op.put_alert_rule(
            "digits",
            "down",
            {"DeviceFleetName": "down", "MaxPsi": 0.25, "Webhook": {"Url": f"{receiver.url}/hook-down"}},
        )
        bucket = server.bucket()
        send_windows(devices, bucket, shift=4.0, seed=500)
        server.complete(bucket)
        events = len([c for c in server.monitor().alerts if c.kind == "alert.opened"])
        assert events
        given_up = 0
        for _ in range(30):  # backoff doubles up to 60 s; give_up_after is 600 s
            server.clock.advance(60)
            given_up += server.monitor().webhooks.given_up
        assert given_up == events
        with server.db.session() as s:
            rows = s.scalars(
                select(WebhookDeliveryRow).where(WebhookDeliveryRow.url.endswith("/hook-down"))
            ).all()
            assert all(
                r.failed_at is not None and r.delivered_at is None and r.next_attempt_at is None for r in rows
            )
            assert all(r.attempts > 3 and "HTTP 500" in (r.last_error or "") for r in rows)
        # deleting the rule clears its open events; their alert.cleared deliveries are due now
        server.op.delete_alert_rule("digits", "down")
        assert list(server.op.list_alert_events("digits", fleet="down", open_only=True)) == []
        with server.db.session() as s:
            due = s.scalars(
                select(WebhookDeliveryRow).where(
                    WebhookDeliveryRow.url.endswith("/hook-down"), WebhookDeliveryRow.delivered_at.is_(None)
                )
            ).all()
            cleared = [r.payload for r in due if r.payload["Type"] == "alert.cleared"]
            assert len(cleared) == events and all(p["Score"] is None and p["ClearedAt"] for p in cleared)
    finally:
        receiver.fail["/hook-down"] = 0
        close_all(devices)


def test_changing_a_rule_opens_and_clears_at_the_next_round(server: AlertServer, receiver: Receiver) -> None:
    devices = server.devices("tune", 2)
    try:
        rule = {"DeviceFleetName": "tune", "ModelVersion": "1", "MaxPsi": 0.25}
        server.op.put_alert_rule("digits", "tune", rule)
        bucket = server.bucket()
        send_windows(devices, bucket, shift=4.0, seed=800)
        server.complete(bucket)
        opened = server.monitor().alerts
        assert opened and {c.score_kind for c in opened} == {"PSI"}
        # a looser PSI threshold and a KS one: the PSI events clear, KS events open, all at once
        server.op.put_alert_rule("digits", "tune", {**rule, "MaxPsi": 1000, "MaxKs": 0.2})
        changed = server.monitor().alerts
        assert sorted(c.feature for c in changed if c.kind == "alert.cleared") == sorted(
            c.feature for c in opened
        )
        ks = [c for c in changed if c.kind == "alert.opened"]
        assert ks and {c.score_kind for c in ks} == {"KS"}
        events = list(server.op.list_alert_events("digits", rule="tune", open_only=True))
        assert {e["ScoreKind"] for e in events} == {"KS"} and all(e["Threshold"] == 0.2 for e in events)
        # the rule has no webhook: its events are logged and listed only
        assert [r for r in receiver.received if r.payload["DeviceFleetName"] == "tune"] == []
    finally:
        server.op.delete_alert_rule("digits", "tune")
        close_all(devices)


def test_bad_alert_rules_are_refused_and_nothing_is_stored(server: AlertServer, receiver: Receiver) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"MaxPsi": -0.1}, "MaxPsi must be a number of at least 0"),
        ({"MaxKs": -1}, "MaxKs must be a number of at least 0"),
        ({"MaxJs": 1.5}, "MaxJs is a Jensen-Shannon divergence"),
        ({}, "needs at least one of MaxPsi, MaxKs, MaxJs"),
        ({"MaxPsi": 0.2, "Webhook": {"Url": "ftp://example.com/hook"}}, "must be an http or https URL"),
        ({"MaxPsi": 0.2, "Webhook": {"Url": "http:///hook"}}, "names no host"),
        ({"MaxPsi": 0.2, "Webhook": {"Url": "https://example.com", "Secret": ""}}, "Webhook.Secret is 1-200"),
        ({"MaxPsi": 0.2, "Unknown": 1}, "Unknown"),
    ]
    for body, message in bad:
        with pytest.raises(InvalidArgument, match=message):
            server.op.put_alert_rule("digits", "bad", body)
    with pytest.raises(InvalidArgument, match="alert rule name 'a_b' is invalid"):
        server.op.put_alert_rule("digits", "a_b", {"MaxPsi": 0.2})
    with pytest.raises(NotFound, match="fleet 'nowhere'"):
        server.op.put_alert_rule("digits", "bad", {"MaxPsi": 0.2, "DeviceFleetName": "nowhere"})
    with pytest.raises(NotFound, match="has no version '9'"):
        server.op.put_alert_rule("digits", "bad", {"MaxPsi": 0.2, "ModelVersion": "9"})
    with pytest.raises(NotFound, match="model 'unknown'"):
        server.op.put_alert_rule("unknown", "bad", {"MaxPsi": 0.2})
    with pytest.raises(NotFound, match="has no alert rule 'bad'"):
        server.op.get_alert_rule("digits", "bad")
    assert "bad" not in {r["AlertRuleName"] for r in server.op.list_alert_rules("digits")}


def test_late_windows_and_a_new_baseline_score_a_bucket_again(server: AlertServer) -> None:
    devices = server.devices("late", 2)
    try:
        bucket = server.bucket()
        send_windows(devices, bucket, shift=0.0, seed=600)
        server.complete(bucket)
        assert server.monitor().buckets_scored >= 1

        def stored() -> tuple[int, int]:
            with server.db.session() as s:
                (row,) = s.scalars(
                    select(DriftBucketRow)
                    .join(Fleet, Fleet.id == DriftBucketRow.fleet_id)
                    .where(Fleet.name == "late", DriftBucketRow.bucket_start == bucket)
                ).all()
                return row.windows, row.calls

        assert stored() == (6, 1200)
        assert server.monitor().buckets_scored == 0
        # a device that was offline sends its window of that bucket late: the bucket is scored again
        late = heartbeat_body(window(bucket + timedelta(minutes=40), x=digits(100, seed=650)))
        assert devices[0].call("SendHeartbeat", late).status_code == 200
        server.clock.advance(30)
        assert server.monitor().buckets_scored == 1
        assert stored() == (7, 1300)
        report = server.op.fleet_drift("late", "digits", version="1", since=bucket.isoformat())
        assert [(b["Windows"], b["Calls"]) for b in report["Buckets"]] == [(7, 1300)]
        # a new baseline: every bucket in the look-back is scored against it
        server.op.put_baseline("digits", "1", summary_of(digits(2000, seed=2)).to_wire())
        server.clock.advance(30)
        with server.db.session() as s:
            buckets = len(s.scalars(select(DriftBucketRow.id)).all())
        assert server.monitor().buckets_scored == buckets
        assert server.monitor().buckets_scored == 0
    finally:
        close_all(devices)


def test_a_bucket_that_cannot_be_merged_is_logged_and_the_others_are_scored(
    server: AlertServer, caplog: pytest.LogCaptureFixture
) -> None:
    import numpy as np

    from edgefleet.core import deviceplane as dp
    from edgefleet.monitoring import ModelSummary

    odd, fine = server.devices("odd", 2), server.devices("fine", 1)
    try:
        bucket = server.bucket()
        send_windows(odd[:1] + fine, bucket, shift=0.0, seed=700)
        narrow = ModelSummary.empty()
        narrow.update({"x": np.zeros((10, 4), np.float32)}, [], [], calls=10)  # 4 features, not 8
        other = dp.SummaryWindow("digits", "1", bucket, bucket + timedelta(minutes=5), 10, narrow.to_wire())
        assert odd[1].call("SendHeartbeat", heartbeat_body(other)).status_code == 200
        server.complete(bucket)
        with caplog.at_level("ERROR", logger="edgefleet.server.drift"):
            assert server.monitor().buckets_scored == 1
        assert "cannot be scored" in caplog.text and "cannot merge summaries of" in caplog.text
        with server.db.session() as s:
            fleets = s.scalars(
                select(Fleet.name)
                .join(DriftBucketRow, DriftBucketRow.fleet_id == Fleet.id)
                .where(DriftBucketRow.bucket_start == bucket)
            ).all()
        assert fleets == ["fine"]
    finally:
        close_all(odd + fine)


@pytest.fixture
def run(server: AlertServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``edgefleet ARGS`` in-process against the test server; (exit code, stdout, stderr)."""
    endpoints = server.running.endpoints
    monkeypatch.setenv("EDGEFLEET_CLIENT_CONFIG", str(server.workdir / "client.json"))
    monkeypatch.setenv("EDGEFLEET_SERVER", endpoints.api_url)
    monkeypatch.setenv("EDGEFLEET_CA_CERT", str(endpoints.ca_cert))
    monkeypatch.setenv("EDGEFLEET_TOKEN", server.token)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def test_alert_cli(server: AlertServer, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    code, out, err = run(
        "alert", "set", "--model", "digits", "--name", "cli-rule", "--max-ks", "0.3",
        "--webhook", "https://hooks.example/edgefleet", "--secret-env", "HOOK_SECRET",
    )  # fmt: skip
    assert code == 0, err
    assert "cli-rule" in out and "https://hooks.example/edgefleet (signed)" in out
    code, out, _ = run("alert", "list", "--model", "digits")
    assert code == 0 and "cli-rule" in out and "0.3" in out
    code, out, _ = run("alert", "list", "--model", "digits", "--json")
    assert code == 0 and {r["AlertRuleName"]: r["MaxKs"] for r in json.loads(out)}["cli-rule"] == 0.3
    code, _, err = run("alert", "set", "--model", "digits", "--name", "cli-rule", "--max-psi", "-1")
    assert code == 1 and "MaxPsi must be a number of at least 0" in err
    code, _, err = run(
        "alert",
        "set",
        "--model",
        "digits",
        "--name",
        "cli-rule",
        "--max-psi",
        "1",
        "--webhook",
        "file:///tmp/x",
    )
    assert code == 1 and "must be an http or https URL" in err
    code, out, _ = run("alert", "events", "--model", "digits", "--json")
    assert code == 0 and isinstance(json.loads(out), list)
    code, out, _ = run("alert", "delete", "--model", "digits", "--name", "cli-rule")
    assert code == 0 and "deleted alert rule cli-rule" in out
    code, _, err = run("alert", "delete", "--model", "digits", "--name", "cli-rule")
    assert code == 1 and "has no alert rule 'cli-rule'" in err


def test_server_refuses_a_bad_drift_bucket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main.main(["server", "--data-dir", str(tmp_path), "--port", "0", "--drift-bucket", "5"])
    assert code == 1 and "the bucket must be 60-2678400 seconds (got 5)" in capsys.readouterr().err
    assert not (tmp_path / "edgefleet.db").exists()


def test_replicas_posting_at_once_deliver_each_webhook_once(
    db: Any, clock: FakeClock, receiver: Receiver
) -> None:
    """Two replicas' rounds claim the due deliveries at the same moment: every delivery is posted
    by exactly one of them (SKIP LOCKED on PostgreSQL, the one writer on SQLite)."""
    from edgefleet.server import webhooks
    from edgefleet.server.config import WebhookPolicy
    from edgefleet.server.db.schema import AlertEventRow

    now = clock.current
    with db.session() as s:
        event = AlertEventRow(
            rule_name="r", fleet_name="f", model_name="m", model_version="1", feature="input x[0]",
            kind="PSI", score=1.0, threshold=0.5, bucket_start=now, bucket_end=now, opened_at=now,
        )  # fmt: skip
        s.add(event)
        s.flush()
        for i in range(40):
            webhooks.enqueue(
                s, event_id=event.id, url=f"{receiver.url}/race", payload={"Type": "alert.opened", "N": i},
                secret=SECRET, now=now,
            )  # fmt: skip
    policy = WebhookPolicy(batch=25)
    start = threading.Barrier(2)
    outcomes: list[webhooks.Outcome] = []

    def replica() -> None:
        start.wait(30)
        outcomes.append(webhooks.deliver_due(db, policy))

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # whatever the two rounds left (each takes at most 25) goes in one more round
    outcomes.append(webhooks.deliver_due(db, policy))
    posts = receiver.at("/race")
    assert sorted(p.payload["N"] for p in posts) == list(range(40))
    assert len({p.headers["X-Edgefleet-Delivery"] for p in posts}) == 40 and all(signed(p) for p in posts)
    assert sum(o.delivered for o in outcomes) == 40
    with db.session() as s:
        rows = s.scalars(select(WebhookDeliveryRow)).all()
        assert all(r.attempts == 1 and r.delivered_at == now for r in rows)


def test_a_slow_receiver_does_not_hold_up_another_and_each_gets_its_deliveries_in_order(
    db: Any, clock: FakeClock, receiver: Receiver
) -> None:
    """One round posts to two receivers at once: while the first receiver keeps its answer back,
    the second gets all of its deliveries; each receiver gets its own deliveries oldest first."""
    from edgefleet.server import webhooks
    from edgefleet.server.config import WebhookPolicy
    from edgefleet.server.db.schema import AlertEventRow

    now = clock.current
    with db.session() as s:
        event = AlertEventRow(
            rule_name="r", fleet_name="f", model_name="m", model_version="1", feature="input x[0]",
            kind="PSI", score=1.0, threshold=0.5, bucket_start=now, bucket_end=now, opened_at=now,
        )  # fmt: skip
        s.add(event)
        s.flush()
        for i in range(6):
            path = "/slow" if i % 2 == 0 else "/quick"
            webhooks.enqueue(
                s, event_id=event.id, url=f"{receiver.url}{path}", payload={"Type": "alert.opened", "N": i},
                secret=SECRET, now=now,
            )  # fmt: skip
    release = threading.Event()
    receiver.hold["/slow"] = release
    outcomes: list[webhooks.Outcome] = []
    round_ = threading.Thread(target=lambda: outcomes.append(webhooks.deliver_due(db, WebhookPolicy())))
    round_.start()
    try:
        quick = receiver.wait_for("/quick", 3)
        # the slow receiver still holds its first delivery's answer back
        assert [p.payload["N"] for p in quick] == [1, 3, 5]
        assert [p.payload["N"] for p in receiver.at("/slow")] == [0]
    finally:
        release.set()
        round_.join(60)
    assert [p.payload["N"] for p in receiver.at("/slow")] == [0, 2, 4]
    assert outcomes == [webhooks.Outcome(delivered=6)]


def test_migration_0009_downgrades_and_upgrades_again(unmigrated: Any) -> None:
    from sqlalchemy import inspect

    db = unmigrated
    db.migrate()

    def tables() -> set[str]:
        with db.engine.connect() as conn:
            return set(inspect(conn).get_table_names())

    new = {"drift_buckets", "drift_scores", "alert_rules", "alert_events", "webhook_deliveries"}
    assert new <= tables()
    migrate(db, "0008", down=True)
    assert not new & tables() and "summary_windows" in tables()
    db.migrate()
    assert new <= tables()


def test_the_server_runs_the_monitoring_by_itself(tmp_path: Path, keys: Path, receiver: Receiver) -> None:
    """With its periodic work on, a replica scores, alerts and posts every monitoring tick."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    clock = FakeClock(datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3))
    config = ServerConfig(
        data_dir=tmp_path / "server", port=0, device_port=0, trust_dir=keys / "trust",
        timing=Timing(shutdown_grace=1, monitoring_tick=0.2, drift_bucket=HOUR, drift_bucket_grace=GRACE),
    )  # fmt: skip
    running = start_in_thread(config, clock=clock, run_jobs=True)
    try:
        with running.state.db.session() as session:
            token = tokens.create_token(session, "ops", running.state.db.now())
        endpoints = running.endpoints
        with FleetClient(ClientConfig(endpoints.api_url, token, Path(endpoints.ca_cert))) as op:
            op.upload_package(build_test_package(keys, tmp_path / "packages", "digits", "1"))
            op.put_baseline("digits", "1", summary_of(digits(2000, seed=1)).to_wire())
            op.create_fleet("auto", "s3://bucket/auto")
            (registered,) = op.register_devices("auto", [{"DeviceName": "auto-0"}])
            device = enrol(endpoints.api_url, registered["EnrolmentToken"], tmp_path / "auto-0")
            try:
                rule = {"MaxPsi": 0.25, "Webhook": {"Url": f"{receiver.url}/hook-auto", "Secret": SECRET}}
                op.put_alert_rule("digits", "auto", rule)
                bucket = clock.current
                send_windows([device], bucket, shift=4.0, seed=900)
                clock.current = bucket + timedelta(seconds=HOUR + GRACE)
                posts = receiver.wait_for("/hook-auto", 1)
                assert posts and all(signed(p) and p.payload["Type"] == "alert.opened" for p in posts)
            finally:
                device.close()
    finally:
        running.stop()
