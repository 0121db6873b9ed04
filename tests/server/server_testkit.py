"""Helpers shared by the control-plane tests (not fixtures: plain functions)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.orm import Session

TOKEN_TTL = timedelta(days=7)
#: PostgreSQL on loopback as the tests reach it (trust auth); the server tests skip when it is absent
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


def make_csr(common_name: str = "ignored") -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A device key and a CSR for it (the CA ignores the CSR's subject)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def build_test_package(
    key_dir: Path,
    out_dir: Path,
    name: str = "detector",
    version: str = "1",
    *,
    arch: str = "any",
    payload: bytes = b'{"weights": [1, 2, 3]}',
) -> Path:
    """A small signed package (null runtime, a JSON "model") built with the real package builder."""
    from edgefleet.core.manifest import Target
    from edgefleet.core.tensors import DataType, TensorSpec
    from edgefleet.packager.build import build_package

    out_dir.mkdir(parents=True, exist_ok=True)
    model = out_dir / f"{name}-{version}-{arch}.json"
    model.write_bytes(payload)
    spec = (TensorSpec("x", DataType.FLOAT32, (1, 4)),)
    return build_package(
        model,
        name=name,
        version=version,
        key_dir=key_dir,
        out_dir=out_dir / arch,
        runtime="null",
        inputs=spec,
        outputs=spec,
        target=Target(os="linux", arch=arch),
    )


def unsigned_package(archive: Path, out: Path) -> Path:
    """A copy of ``archive`` without its signature file."""
    with tarfile.open(archive, "r:gz") as tar, tarfile.open(out, "w:gz") as dest:
        for info in tar.getmembers():
            if info.name != "manifest.sig":
                handle = tar.extractfile(info)
                dest.addfile(info, io.BytesIO(handle.read() if handle else b""))
    return out


def tamper_package(archive: Path, out: Path) -> Path:
    """A copy of ``archive`` whose model file has one byte changed (same size, signature untouched)."""
    members = []
    with tarfile.open(archive, "r:gz") as tar:
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            data = handle.read() if handle else b""
            if info.name.endswith(".json") and info.name != "manifest.json":
                data = bytes([data[0] ^ 0x01]) + data[1:]
            members.append((info, data))
    with tarfile.open(out, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return out


def record_package_row(
    session: Session,
    model: str,
    version: str,
    *,
    os_name: str = "linux",
    arch: str = "any",
    accelerator: str = "none",
    actor: str = "tester",
) -> int:
    """Record a package row directly (state-machine tests need versions with packages, not archives)."""
    from sqlalchemy import select

    from edgefleet.server.db.schema import Model, ModelPackage, ModelVersion
    from edgefleet.server.registry import create_model, create_version

    now = session.info.get("now")
    assert now is not None, "set session.info['now'] first"
    row = session.scalar(select(Model).where(Model.name == model))
    if row is None:
        create_model(session, model, actor, now)
    mv = session.scalar(
        select(ModelVersion).join(Model).where(Model.name == model, ModelVersion.version == version)
    )
    if mv is None:
        mv = create_version(session, model, version, actor, now)
    digest = hashlib.sha256(f"{model}/{version}/{arch}".encode()).hexdigest()
    package = ModelPackage(
        model_version_id=mv.id,
        target=f"{os_name}-{arch}-{accelerator}",
        target_os=os_name,
        target_arch=arch,
        target_accelerator=accelerator,
        runtime="onnxruntime",
        artifact_key=f"models/{model}/{version}/{digest}.tar.gz",
        size=10,
        sha256=digest,
        sha1=digest[:40],
        manifest={"name": model, "version": version},
        signer="CN=test signer",
        uploaded_at=now,
        uploaded_by=actor,
    )
    session.add(package)
    session.flush()
    session.refresh(mv)
    return package.id


class DeviceClient:
    """A device as the control plane sees it: enrolled with its own key, talking mutual TLS."""

    def __init__(
        self,
        name: str,
        fleet: str,
        device_url: str,
        ca_pem: str,
        cert_pem: str,
        key: ec.EllipticCurvePrivateKey,
        workdir: Path,
    ) -> None:
        import ssl

        import httpx

        self.name = name
        self.fleet = fleet
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "ca.pem").write_text(ca_pem)
        (workdir / "cert.pem").write_text(cert_pem)
        (workdir / "key.pem").write_bytes(key_pem(key))
        context = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
        context.load_cert_chain(str(workdir / "cert.pem"), str(workdir / "key.pem"))
        self.http = httpx.Client(base_url=device_url, verify=context, timeout=30)

    def call(self, operation: str, body: dict[str, object] | None = None, **overrides: object) -> object:
        payload = {"DeviceName": self.name, "DeviceFleetName": self.fleet, **(body or {}), **overrides}
        return self.http.post(f"/device/v1/{operation}", json=payload)

    def close(self) -> None:
        self.http.close()


def enrol(api_url: str, token: str, workdir: Path) -> DeviceClient:
    """Enrol like a device daemon: pin the CA from the token, send a CSR, keep the key local."""
    import ssl

    import httpx

    ca_sha256 = token.rsplit(".", 1)[1]
    with httpx.Client(verify=False) as insecure:  # the CA is pinned by the token, checked below
        ca_pem = insecure.get(f"{api_url}/enrol/v1/ca.pem").text
    cert = x509.load_pem_x509_certificate(ca_pem.encode())
    assert hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest() == ca_sha256
    key, csr = make_csr()
    context = ssl.create_default_context(cadata=ca_pem)
    with httpx.Client(verify=context) as client:
        response = client.post(
            f"{api_url}/enrol/v1/enrol", json={"EnrolmentToken": token, "CertificateSigningRequest": csr}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    return DeviceClient(
        body["DeviceName"],
        body["DeviceFleetName"],
        body["DeviceEndpoint"],
        ca_pem,
        body["Certificate"],
        key,
        workdir,
    )


def enrol_tokens(db: Any, tokens: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """Enrol each device with its one-time token and a fresh key; name -> certificate serial."""
    from edgefleet.server import devices
    from edgefleet.server.ca import FleetCA

    ca = FleetCA.load_or_create(db)
    serials = {}
    for name, token in zip(names, tokens, strict=True):
        with db.session() as s:
            device, _ = devices.enrol(s, token, make_csr()[1], ca, db.now(), 365)
            assert device.cert_serial is not None
            serials[name] = device.cert_serial
    return serials


def enrolled_fleet(db: Any, fleet: str, names: Sequence[str]) -> dict[str, str]:
    """Create ``fleet``, register ``names`` in it and enrol them; name -> certificate serial."""
    from edgefleet.server import devices, fleets
    from edgefleet.server.ca import FleetCA

    with db.session() as s:
        fleets.create_fleet(s, fleets.FleetSpec(name=fleet, output_location="s3://bucket/p"), db.now())
    ca = FleetCA.load_or_create(db)
    with db.session() as s:
        registrations = devices.register_devices(
            s, fleet, [devices.DeviceSpec(n) for n in names], ca, db.now(), TOKEN_TTL
        )
        tokens = [r.enrolment_token for r in registrations]
    return enrol_tokens(db, tokens, names)


def stored_model(m: Any) -> tuple[Any, ...]:
    """Everything the server stores of one model a device reported (a ``DeviceModel`` row)."""
    return (m.model_name, m.model_version, m.latest_sample_at, m.latest_inference_at, m.metrics, m.updated_at)


@contextmanager
def scratch_pg_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); yields its URL, or skips the test."""
    import uuid

    import pytest

    pytest.importorskip("psycopg")
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 as postgres (db 'test'): {exc.orig}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def captured_batch(
    store: Any,
    fleet: str,
    device: str,
    model: str,
    version: str,
    start: datetime,
    count: int,
    *,
    prefix: str = "captures",
    big: bool = False,
) -> Any:
    """Write a capture batch object of ``count`` records into ``store`` the way a device's sink does
    (records from capture/records.py, raw-data files for payloads over the embed limit when ``big``);
    the ``CaptureUpload`` a heartbeat reports for it. Input ``x`` is float32 (2, 3) holding the
    record's index, output ``y`` int64 (1,) = index; with ``big`` ``x`` is (32, 32)."""
    import uuid as _uuid

    import numpy as np

    from edgefleet.capture import records as rec
    from edgefleet.core import deviceplane as dp
    from edgefleet.core.tensors import DataType

    directory = rec.object_dir(prefix, fleet, model, rec.partition_of(start))
    key = rec.object_key(directory, _uuid.uuid4().hex)
    lines, raw = [], 0
    for i in range(count):
        x = np.full((32, 32) if big else (2, 3), float(i), dtype=np.float32)
        y = np.array([i], dtype=np.int64)
        request = rec.CaptureRequest(
            capture_id=str(_uuid.uuid4()),
            model_name=model,
            model_version=version,
            inference_time=start + timedelta(seconds=i),
            inputs=(rec.CaptureTensor("x", DataType.FLOAT32, x.shape, x.tobytes()),),
            outputs=(rec.CaptureTensor("y", DataType.INT64, y.shape, y.tobytes()),),
        )
        encoded = rec.encode_record(
            request,
            device_name=device,
            fleet_name=fleet,
            directory=directory,
            embed_limit=rec.MAX_EMBED_LIMIT,
            uri=store.url,
        )
        for payload in encoded.raw:
            store.put_bytes(payload.key, payload.data)
            raw += 1
        lines.append(encoded.line)
    data = b"".join(lines)
    store.put_bytes(key, data)
    return dp.CaptureUpload(
        key=key,
        model_name=model,
        model_version=version,
        records=count,
        size=len(data),
        first_inference=start.replace(microsecond=0),
        last_inference=(start + timedelta(seconds=count - 1)).replace(microsecond=0),
        raw_objects=raw,
    )


def heartbeat_uploads(
    device: DeviceClient, uploads: Sequence[Any], models: Sequence[tuple[str, str]] = ()
) -> None:
    """Send one SendHeartbeat reporting ``uploads`` (``CaptureUpload``s) and ``models`` loaded."""
    from edgefleet.core import deviceplane as dp

    body = {
        "AgentVersion": "1.0",
        "Models": [{"ModelName": m, "ModelVersion": v} for m, v in models],
        "Capture": dp.CaptureReport(uploads=tuple(uploads)).to_wire(),
    }
    response: Any = device.call("SendHeartbeat", body)
    assert response.status_code == 200, response.text


def migrate(db: Any, revision: str, *, down: bool = False) -> None:
    """Run the server's alembic migrations on ``db`` up (or ``down``) to ``revision``."""
    from alembic import command
    from alembic.config import Config

    from edgefleet.server.db.engine import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)
