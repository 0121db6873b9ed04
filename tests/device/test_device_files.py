"""What the daemon keeps on disk: its config, its identity (enrolment) and the handle map."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.client.handles import HandleEntry, HandleMap, write_handles
from edgefleet.core.errors import (
    AlreadyExists,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from edgefleet.device.config import load_config
from edgefleet.device.identity import (
    Enrolment,
    EnrolmentToken,
    ca_fingerprint,
    enroll,
    load_identity,
)

# -- config -------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path / "daemon.toml",
            '[daemon]\ntrust_dir = "trust"\nstate_dir = "state"\n[agent]\nspawn = true\n'
            "[timing]\nheartbeat_interval_seconds = 5\n",
        )
    )
    assert config.trust_dir == tmp_path / "trust"
    assert config.state_dir == tmp_path / "state"
    assert config.agent_address == f"unix://{tmp_path / 'state' / 'agent.sock'}"
    assert config.timing.heartbeat_interval_seconds == 5.0
    assert config.timing.poll_interval_seconds == 30.0
    assert config.retry.max_attempts == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[daemon]\nstate_dir = "s"\n[agent]\nspawn = true\n', "needs daemon.trust_dir"),
        ('[daemon]\ntrust_dir = "t"\n', "agent.address is required unless agent.spawn = true"),
        (
            '[daemon]\ntrust_dir = "t"\n[agent]\nspawn = true\nsocket = "x"\n',
            r"unknown key agent.socket \(known: ",
        ),
        ('[daemon]\ntrust_dir = "t"\n[agnet]\n', r"unknown daemon config tables: agnet \(known: "),
        ('[daemon]\ntrust_dir = "t"\n[agent]\nspawn = "yes"\n', "'agent.spawn' must be true or false"),
        (
            '[daemon]\ntrust_dir = "t"\n[agent]\nspawn = true\n[timing]\npoll_interval_seconds = 0\n',
            "must be positive",
        ),
        ('[daemon]\ntrust_dir = "t"\n[agent]\nspawn = true\n[retry]\nmax_attempts = 0\n', "at least 1"),
        ("[daemon\n", "is not valid TOML"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_config(write(tmp_path / "daemon.toml", text))


def test_a_missing_config_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        load_config(tmp_path / "nope.toml")


# -- identity -----------------------------------------------------------------------------------


class TinyCA:
    """A fleet CA standing in for the server's, to exercise enrolment without a network."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test fleet CA")])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.token = f"efe1.secret.{ca_fingerprint(self.pem)}"
        self.csrs: list[str] = []

    def issue(self, csr_pem: str) -> str:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")]))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(2)
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def enroller(self, server_url: str, token: EnrolmentToken, csr_pem: str) -> Enrolment:
        self.csrs.append(csr_pem)
        return Enrolment("cam-1", "factory", self.issue(csr_pem), self.pem, "https://devices.example:8444")


def test_enrolment_stores_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    ca = TinyCA()
    identity = enroll(tmp_path / "state", "https://fleet.example:8443", ca.token, ca.enroller)
    assert (identity.device_name, identity.fleet_name) == ("cam-1", "factory")
    assert identity.device_url == "https://devices.example:8444"
    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(identity.directory.stat().st_mode) == 0o700
    key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert load_identity(tmp_path / "state") == identity


def test_enrolling_twice_needs_force(tmp_path: Path) -> None:
    ca = TinyCA()
    first = enroll(tmp_path / "state", "https://f:1", ca.token, ca.enroller)
    old_key = first.key_path.read_bytes()
    with pytest.raises(AlreadyExists, match="pass --force"):
        enroll(tmp_path / "state", "https://f:1", ca.token, ca.enroller)
    assert len(ca.csrs) == 1  # refused before anything was sent
    enroll(tmp_path / "state", "https://f:1", ca.token, ca.enroller, force=True)
    assert first.key_path.read_bytes() != old_key


def test_a_server_whose_ca_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    ca, impostor = TinyCA(), TinyCA()
    with pytest.raises(FailedPrecondition, match="not the one the enrolment token pins"):
        enroll(tmp_path / "state", "https://f:1", ca.token, impostor.enroller)
    assert not (tmp_path / "state").exists()


def test_a_certificate_for_another_key_is_refused(tmp_path: Path) -> None:
    ca = TinyCA()

    def swapped(server_url: str, token: EnrolmentToken, csr_pem: str) -> Enrolment:
        other = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(other, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        return Enrolment("cam-1", "factory", ca.issue(csr), ca.pem, "https://d:1")

    with pytest.raises(EdgefleetError, match="not for this device's key"):
        enroll(tmp_path / "state", "https://f:1", ca.token, swapped)
    with pytest.raises(NotFound, match="not enrolled"):
        load_identity(tmp_path / "state")


@pytest.mark.parametrize("token", ["", "efe1.x.nothex", "a.b", "efe1..0123"])
def test_malformed_tokens_are_invalid(tmp_path: Path, token: str) -> None:
    with pytest.raises(InvalidArgument, match="enrolment token"):
        enroll(tmp_path / "state", "https://f:1", token, TinyCA().enroller)


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    ca = TinyCA()
    identity = enroll(tmp_path / "state", "https://f:1", ca.token, ca.enroller)
    os.chmod(identity.key_path, 0o644)
    with pytest.raises(FailedPrecondition, match="readable by others; chmod 600 it"):
        load_identity(tmp_path / "state")


# -- handle map ---------------------------------------------------------------------------------


def test_the_handle_map_follows_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "handles.json"
    handles = HandleMap(path)
    with pytest.raises(NotFound, match="no model serves the handle 'detector'"):
        handles.resolve("detector")
    write_handles(path, {"detector": HandleEntry("detector-1-0-g1", "det", "1.0")})
    assert handles.resolve("detector") == "detector-1-0-g1"
    write_handles(path, {"detector": HandleEntry("detector-2-0-g2", "det", "2.0")})
    assert handles.resolve("detector") == "detector-2-0-g2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.write_text("{not json")
    with pytest.raises(FailedPrecondition, match="cannot read the handle map"):
        handles.resolve("detector")
