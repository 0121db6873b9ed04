"""Device certificate renewal against a real control plane (TLS on loopback; SQLite and PostgreSQL).

The daemon renews at two thirds of its certificate's life, with a new key, over mutual TLS; the old
certificate keeps working (heartbeats through the device fast path included) until the renewed one
is first used; a crash at any point of a renewal leaves a working identity; an expired certificate
is reported as such (not as an outage) with the way to enrol again. The daemon's clock is injected;
the server's follows real time (its certificates must be valid for the real TLS stack), shifted
where a test needs a certificate that expired.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from server_testkit import FakeClock, scratch_pg_database

from edgefleet.core.deviceplane import Heartbeat
from edgefleet.core.errors import Code, EdgefleetError, Unauthenticated
from edgefleet.core.files import move_atomic, write_bytes_atomic
from edgefleet.device.https import HttpsControlPlane, enroller
from edgefleet.device.identity import (
    Identity,
    certificate_validity,
    enroll,
    key_pem,
    load_identity,
    make_csr,
    new_key,
    store_renewal,
)
from edgefleet.device.renewal import CertificateRenewal, RenewalState

pytest.importorskip("fastapi", reason="these tests need the server extra")

CERT_DAYS = 3
FLEET = "renewals"


class ShiftedClock:
    """Real time plus an offset the test sets (the server's clock)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Env:
    server: Any
    op: Any
    clock: ShiftedClock

    @property
    def api_url(self) -> str:
        return str(self.server.endpoints.api_url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, signing_keys: Any
) -> Iterator[Env]:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    clock = ShiftedClock()
    with ExitStack() as stack:
        database_url = None
        if request.param == "postgresql":
            database_url = stack.enter_context(scratch_pg_database("edgefleet_renewal"))
        config = ServerConfig(
            data_dir=tmp_path_factory.mktemp("server"),
            database_url=database_url,
            port=0,
            device_port=0,
            trust_dir=signing_keys.trust_dir,
            timing=Timing(shutdown_grace=1, device_cert_days=CERT_DAYS),
        )
        server = start_in_thread(config, clock=clock)
        stack.callback(server.stop)
        db = server.state.db
        with db.session() as session:
            secret = tokens.create_token(session, "renewal-tests", db.now())
        op = FleetClient(ClientConfig(server.endpoints.api_url, secret, Path(server.endpoints.ca_cert)))
        stack.callback(op.close)
        op.request(
            "POST",
            "/api/v1/fleets",
            json={"DeviceFleetName": FLEET, "OutputConfig": {"S3OutputLocation": "file:///tmp/s"}},
        )
        yield Env(server, op, clock)


def enrolled(env: Env, name: str, state: Path) -> Identity:
    (registered,) = env.op.register_devices(FLEET, [{"DeviceName": name}])
    return enroll(state, env.api_url, registered["EnrolmentToken"], enroller())


def heartbeat() -> Heartbeat:
    return Heartbeat(agent_version="1.0", taken_at=datetime.now(UTC), platform=("linux", "x86_64", "none"))


def public_key(cert_path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_daemon(identity: Identity, work: Path, now: FakeClock, trust: Path) -> Any:
    """A daemon over the real HTTPS plane, with the in-process null agent and an injected clock."""
    from edgefleet.device.agentlink import AgentConnection
    from edgefleet.device.config import AgentSettings, DaemonConfig, DeploymentSettings
    from edgefleet.device.daemon import Daemon
    from edgefleet.device.executor import Executor
    from edgefleet.device.outbox import Outbox
    from edgefleet.device.packages import PackageStore
    from edgefleet.device.sim.nullagent import NullAgent
    from edgefleet.device.state import StateStore

    config = DaemonConfig(trust_dir=trust, state_dir=work, agent=AgentSettings(address="in-process"))
    plane = HttpsControlPlane(identity, timeout=30)
    agent = NullAgent()
    connection = AgentConnection(agent, agent)
    store = StateStore(work)
    executor = Executor(
        store=store,
        agent=connection,
        packages=PackageStore(work / "packages", trust),
        plane=plane,
        handles_path=work / "handles.json",
        retry=config.retry,
        settings=DeploymentSettings(),
        now=now,
    )
    return Daemon(
        config=config,
        store=store,
        outbox=Outbox(work, config.queue.max_heartbeats),
        executor=executor,
        plane=plane,
        agent=connection,
        platform=("linux", "x86_64", "none"),
        now=now,
        renewal=CertificateRenewal(identity, plane, now=now),
    )


def test_the_daemon_renews_at_two_thirds_of_the_certificates_life(env: Env, tmp_path: Path) -> None:
    state = tmp_path / "state"
    identity = enrolled(env, "renew-daemon", state)
    old_cert, old_key = identity.cert_path.read_bytes(), identity.key_path.read_bytes()
    old_public = public_key(identity.cert_path)
    validity = certificate_validity(identity.cert_path)
    assert validity.not_after - validity.not_before == timedelta(days=CERT_DAYS, minutes=5)
    two_thirds = validity.renew_from(2 / 3)
    clock = FakeClock(two_thirds - timedelta(minutes=1))
    keep_old = HttpsControlPlane(identity, timeout=30)  # presents the certificate loaded now
    daemon = make_daemon(identity, state, clock, env.server.state.config.resolved_trust_dir)
    try:
        daemon.reconcile_once()
        assert daemon.registered
        assert identity.cert_path.read_bytes() == old_cert  # not due yet
        assert daemon.renew_certificate() is RenewalState.NOT_DUE

        env.clock.offset = timedelta(minutes=2)  # the renewed certificate ends later than the old one
        clock.advance(120)
        try:
            daemon.reconcile_once()
        finally:
            env.clock.offset = timedelta(0)
        assert daemon.registered and daemon.heartbeat_once()
        renewed = certificate_validity(identity.cert_path)
        assert renewed.serial != validity.serial and renewed.not_after > validity.not_after
        assert identity.key_path.read_bytes() != old_key  # a new key, not the old one re-certified
        assert public_key(identity.cert_path) != old_public
        assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
        assert not identity.renewal_key_path.exists() and not identity.renewal_cert_path.exists()
        described = env.op.describe_device("renew-daemon")
        expires = datetime.fromisoformat(described["CertificateExpiresAt"].replace("Z", "+00:00"))
        assert abs(expires - renewed.not_after) < timedelta(seconds=1)
        # the renewed certificate was used, so the old one is refused from now on
        with pytest.raises(
            EdgefleetError, match="this certificate of device 'renew-daemon' was revoked"
        ) as old:
            keep_old.get_registration()
        assert old.value.code is Code.UNAUTHENTICATED
        # a daemon started again uses the renewed pair, and is not due for another renewal
        restarted = make_daemon(
            load_identity(state), state, clock, env.server.state.config.resolved_trust_dir
        )
        try:
            assert restarted.renew_certificate() is RenewalState.NOT_DUE
            assert restarted.heartbeat_once()
        finally:
            restarted.plane.close()
    finally:
        keep_old.close()
        daemon.plane.close()


def test_the_old_certificate_works_until_the_renewed_one_is_used(env: Env, tmp_path: Path) -> None:
    identity = enrolled(env, "renew-overlap", tmp_path / "state")
    old = HttpsControlPlane(identity, timeout=30)
    new = HttpsControlPlane(identity, timeout=30)
    try:
        key = new_key()
        store_renewal(identity, key, new.renew_certificate(make_csr(key)))
        for _ in range(2):  # heartbeats (group-committed on the fast path), polls, registration
            old.send_heartbeat(heartbeat())
            assert old.get_deployments() == []
            assert old.get_registration().status == "REGISTERED"
        new.use_certificate(identity.renewal_cert_path, identity.renewal_key_path)
        new.send_heartbeat(heartbeat())  # first use: declined by the fast path, switched by the route
        for call in (lambda: old.send_heartbeat(heartbeat()), old.get_deployments):
            with pytest.raises(
                EdgefleetError, match="this certificate of device 'renew-overlap' was revoked"
            ) as e:
                call()
            assert e.value.code is Code.UNAUTHENTICATED
        new.send_heartbeat(heartbeat())
        assert new.get_deployments() == []
    finally:
        old.close()
        new.close()


def test_renewal_is_refused_for_the_same_key_and_for_a_deregistered_device(env: Env, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    identity = enrolled(env, "renew-refused", tmp_path / "state")
    plane = HttpsControlPlane(identity, timeout=30)
    try:
        key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
        with pytest.raises(EdgefleetError, match="a renewal needs a new key") as same:
            plane.renew_certificate(make_csr(key))  # type: ignore[arg-type]
        assert same.value.code is Code.INVALID_ARGUMENT
        before = identity.cert_path.read_bytes()
        due = certificate_validity(identity.cert_path).renew_from(0.9)
        renewal = CertificateRenewal(identity, plane, now=FakeClock(due), retry_seconds=600)
        env.op.deregister_device("renew-refused")
        assert renewal.check() is RenewalState.REFUSED
        assert renewal.check() is RenewalState.NOT_DUE  # not asked again before retry_seconds
        assert identity.cert_path.read_bytes() == before
        assert not identity.renewal_key_path.exists() and not identity.renewal_cert_path.exists()
    finally:
        plane.close()


def test_an_expired_certificate_says_how_to_enrol_again(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgefleet.cli.main import main

    state = tmp_path / "state"
    env.clock.offset = -timedelta(days=CERT_DAYS + 1)  # issued long enough ago to have expired now
    try:
        identity = enrolled(env, "renew-expired", state)
    finally:
        env.clock.offset = timedelta(0)
    plane = HttpsControlPlane(identity, timeout=30)
    try:
        renewal = CertificateRenewal(identity, plane, now=lambda: datetime.now(UTC))
        with caplog.at_level(logging.ERROR, logger="edgefleet.device.renewal"):
            assert renewal.check() is RenewalState.EXPIRED
            assert renewal.check() is RenewalState.EXPIRED
        said = [r.getMessage() for r in caplog.records if r.name == "edgefleet.device.renewal"]
        assert len(said) == 1, said  # once, not every pass
        assert "expired at" in said[0] and "edgefleet device enroll --force" in said[0]
        # the server's TLS refuses the certificate: a refusal with the way out, not an outage
        with pytest.raises(
            Unauthenticated,
            match=r"refused this device.s certificate: it expired at .*edgefleet device new-token",
        ) as refused:
            plane.get_registration()
        assert refused.value.code is Code.UNAUTHENTICATED
    finally:
        plane.close()
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'[daemon]\ntrust_dir = "{tmp_path}"\nstate_dir = "{state}"\n[agent]\naddress = "unix:///x.sock"\n'
    )
    capsys.readouterr()
    assert main(["device", "status", "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "certificate: EXPIRED at" in shown and "edgefleet device enroll --force" in shown
    # the documented way back: a new token from the operator, then enrol again with --force
    token = env.op.new_enrolment_token("renew-expired")["EnrolmentToken"]
    again = enroll(state, env.api_url, token, enroller(), force=True)
    plane = HttpsControlPlane(again, timeout=30)
    try:
        assert plane.get_registration().status == "REGISTERED"
        assert not certificate_validity(again.cert_path).expired(datetime.now(UTC))
    finally:
        plane.close()
    assert main(["device", "status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["certificate"]
    assert status["expired"] is False and status["serial"] == certificate_validity(again.cert_path).serial


def test_a_renewal_interrupted_by_a_crash_leaves_a_working_identity(env: Env, tmp_path: Path) -> None:
    state = tmp_path / "state"
    identity = enrolled(env, "renew-crash", state)
    plane = HttpsControlPlane(identity, timeout=30)
    # 1. crash after the renewed pair reached the disk, before it was used: the old pair still works
    #    and the next check confirms and installs the stored pair (even though renewal is not due)
    key = new_key()
    store_renewal(identity, key, plane.renew_certificate(make_csr(key)))
    plane.close()
    identity = load_identity(state)
    plane = HttpsControlPlane(identity, timeout=30)
    assert plane.get_registration().status == "REGISTERED"
    assert CertificateRenewal(identity, plane, now=lambda: datetime.now(UTC)).check() is RenewalState.RENEWED
    assert identity.key_path.read_bytes() == key_pem(key)
    plane.send_heartbeat(heartbeat())

    # 2. crash between installing the new key and installing its certificate (after the server
    #    switched to it): loading the identity finishes the install
    key = new_key()
    store_renewal(identity, key, plane.renew_certificate(make_csr(key)))
    plane.use_certificate(identity.renewal_cert_path, identity.renewal_key_path)
    plane.get_registration()
    move_atomic(identity.renewal_key_path, identity.key_path)
    plane.close()
    identity = load_identity(state)
    assert not identity.renewal_cert_path.exists()
    assert identity.key_path.read_bytes() == key_pem(key)
    plane = HttpsControlPlane(identity, timeout=30)
    plane.send_heartbeat(heartbeat())

    # 3. crash after writing the new key, before its certificate: the key is dropped, the pair stays
    write_bytes_atomic(identity.renewal_key_path, key_pem(new_key()), mode=0o600)
    plane.close()
    identity = load_identity(state)
    assert not identity.renewal_key_path.exists()
    plane = HttpsControlPlane(identity, timeout=30)
    try:
        plane.send_heartbeat(heartbeat())
        assert plane.get_registration().status == "REGISTERED"
    finally:
        plane.close()
