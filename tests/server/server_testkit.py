"""Helpers shared by the control-plane tests (not fixtures: plain functions)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.orm import Session

TOKEN_TTL = timedelta(days=7)


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
