"""The model registry: models, versions (signed packages, one per target), approval status, aliases.

A package is verified against the server's trust store before anything is stored, with
:func:`edgefleet.core.package.verify_package` (signature, signer chain, per-file digests, archive
safety). Only then is the archive written to the artifact store and recorded. Versions take packages only while their approval is pending, so an approved version
cannot change under a deployment.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.core.manifest import Manifest, validate_version
from edgefleet.server.artifacts import ArtifactStore
from edgefleet.server.db.engine import Database
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import Baseline, Model, ModelAlias, ModelPackage, ModelVersion, PlanModel
from edgefleet.server.validation import Page, validate_name

log = logging.getLogger(__name__)


class Approval(enum.StrEnum):
    """Approval status of a model version (the SageMaker Model Registry names)."""

    PENDING = "PendingManualApproval"
    APPROVED = "Approved"
    REJECTED = "Rejected"


@dataclass(frozen=True)
class VerifiedPackage:
    """A package archive that passed verification, with the facts the registry records."""

    manifest: Manifest
    signer: str
    size: int
    sha256: str
    sha1: str

    @property
    def target(self) -> str:
        """``os-arch-accelerator``: one package per target per version."""
        t = self.manifest.target
        return f"{t.os}-{t.arch}-{t.accelerator}"


def create_model(
    session: Session, name: str, actor: str, now: datetime, description: str | None = None
) -> Model:
    """Create a model; ALREADY_EXISTS if the name is taken."""
    validate_name(name, "model name")
    _check_text(description, "Description")
    if session.scalar(select(Model.id).where(Model.name == name)) is not None:
        raise AlreadyExists(f"model {name!r} already exists")
    model = Model(name=name, description=description, created_at=now, created_by=actor)
    session.add(model)
    session.flush()
    return model


def get_model(session: Session, name: str) -> Model:
    """The model called ``name``; NOT_FOUND otherwise."""
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFound(f"model {name!r} does not exist")
    return model


def list_models(
    session: Session, *, name_contains: str | None = None, limit: int, next_token: str | None
) -> Page[Model]:
    """Models by name."""
    stmt = select(Model).order_by(Model.name)
    if name_contains:
        stmt = stmt.where(Model.name.contains(name_contains, autoescape=True))
    return paginate(session, stmt, limit, next_token)


def aliases_of(session: Session, model: Model) -> dict[str, str]:
    """alias -> version of a model."""
    rows = session.scalars(
        select(ModelAlias).where(ModelAlias.model_id == model.id).order_by(ModelAlias.alias)
    )
    return {row.alias: row.model_version.version for row in rows}


def delete_model(session: Session, name: str) -> list[str]:
    """Delete a model and all its versions; returns the artifact keys to delete after commit."""
    model = get_model(session, name)
    versions = list(session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)))
    keys: list[str] = []
    for version in versions:
        _check_unused(session, version)
        keys.extend(p.artifact_key for p in version.packages)
    session.delete(model)
    return keys


def create_version(
    session: Session, model_name: str, version: str, actor: str, now: datetime, description: str | None = None
) -> ModelVersion:
    """Create an (empty, pending approval) version; ALREADY_EXISTS if it exists."""
    model = get_model(session, model_name)
    validate_version(version)
    _check_text(description, "Description")
    if _find_version(session, model, version) is not None:
        raise AlreadyExists(f"model {model_name!r} already has a version {version!r}")
    row = ModelVersion(
        model_id=model.id,
        model=model,
        version=version,
        description=description,
        approval_status=Approval.PENDING.value,
        created_at=now,
        created_by=actor,
        packages=[],
    )
    session.add(row)
    session.flush()
    return row


def _find_version(session: Session, model: Model, version: str) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == version)
    )


def get_version(session: Session, model_name: str, version: str) -> ModelVersion:
    """Version ``version`` of ``model_name``; NOT_FOUND otherwise."""
    model = get_model(session, model_name)
    row = _find_version(session, model, version)
    if row is None:
        raise NotFound(f"model {model_name!r} has no version {version!r}")
    return row


def resolve_version(
    session: Session, model_name: str, version: str | None, alias: str | None
) -> ModelVersion:
    """The version named directly or through an alias (exactly one of the two)."""
    if (version is None) == (alias is None):
        raise InvalidArgument(f"model {model_name!r}: give exactly one of ModelVersion and ModelAlias")
    if version is not None:
        return get_version(session, model_name, version)
    model = get_model(session, model_name)
    row = session.get(ModelAlias, (model.id, alias))
    if row is None:
        raise NotFound(f"model {model_name!r} has no alias {alias!r}")
    return row.model_version


def list_versions(
    session: Session,
    model_name: str,
    *,
    approval_status: str | None = None,
    limit: int,
    next_token: str | None,
) -> Page[ModelVersion]:
    """Versions of a model, newest first, optionally only those with an approval status."""
    model = get_model(session, model_name)
    stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if approval_status is not None:
        stmt = stmt.where(ModelVersion.approval_status == _approval(approval_status).value)
    stmt = stmt.order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    return paginate(session, stmt, limit, next_token)


def delete_version(session: Session, model_name: str, version: str) -> list[str]:
    """Delete a version no deployment plan uses; returns artifact keys to delete after commit."""
    row = get_version(session, model_name, version)
    _check_unused(session, row)
    keys = [p.artifact_key for p in row.packages]
    session.delete(row)
    return keys


def _check_unused(session: Session, version: ModelVersion) -> None:
    used = session.scalar(
        select(func.count()).select_from(PlanModel).where(PlanModel.model_version_id == version.id)
    )
    if used:
        raise FailedPrecondition(
            f"version {version.version!r} of {version.model.name!r} is used by {used} deployment plan(s)"
        )


def _check_text(value: str | None, what: str) -> None:
    if value is not None and not 1 <= len(value) <= 1000:
        raise InvalidArgument(f"{what} must be 1-1000 characters")


def _approval(status: str) -> Approval:
    try:
        return Approval(status)
    except ValueError as exc:
        known = ", ".join(a.value for a in Approval)
        raise InvalidArgument(f"approval status {status!r} is invalid (known: {known})") from exc


def set_approval(
    session: Session,
    model_name: str,
    version: str,
    status: str,
    actor: str,
    now: datetime,
    reason: str | None = None,
) -> ModelVersion:
    """Set the approval status of a version, recording who and when. Approving needs a package."""
    approval = _approval(status)
    _check_text(reason, "Reason")
    row = get_version(session, model_name, version)
    if approval is Approval.APPROVED and not row.packages:
        raise FailedPrecondition(f"version {version!r} of {model_name!r} has no package to approve")
    row.approval_status = approval.value
    row.approval_by = actor
    row.approval_at = now
    row.approval_reason = reason
    return row


def set_alias(
    session: Session, model_name: str, alias: str, version: str, actor: str, now: datetime
) -> ModelAlias:
    """Point ``alias`` of a model at ``version`` (creating or moving it)."""
    validate_name(alias, "alias")
    target = get_version(session, model_name, version)
    row = session.get(ModelAlias, (target.model_id, alias))
    if row is None:
        row = ModelAlias(model_id=target.model_id, alias=alias)
        session.add(row)
    row.model_version_id = target.id
    row.model_version = target
    row.updated_at = now
    row.updated_by = actor
    return row


def delete_alias(session: Session, model_name: str, alias: str) -> None:
    """Remove an alias; NOT_FOUND if it does not exist."""
    model = get_model(session, model_name)
    row = session.get(ModelAlias, (model.id, alias))
    if row is None:
        raise NotFound(f"model {model_name!r} has no alias {alias!r}")
    session.delete(row)


def verify_archive(archive: Path, trust_dir: Path) -> VerifiedPackage:
    """Verify a package archive against ``trust_dir`` (streamed; nothing is unpacked to disk).

    Raises the package module's errors: PackageFormatError (INVALID_ARGUMENT) for a malformed
    archive, SignatureError (FAILED_PRECONDITION) for a bad signature, chain or digest.
    """
    from edgefleet.core.package import verify_package

    if not trust_dir.is_dir():
        raise FailedPrecondition(
            f"the server's trust store {trust_dir} does not exist: add the signers' root certificates (--trust DIR)"
        )
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(usedforsecurity=False)
    size = 0
    with archive.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            sha256.update(chunk)
            sha1.update(chunk)
            size += len(chunk)
    verified = verify_package(archive, trust_dir)
    return VerifiedPackage(
        verified.manifest, verified.signer.subject, size, sha256.hexdigest(), sha1.hexdigest()
    )


def package_key(verified: VerifiedPackage) -> str:
    """Where a package's archive is stored: content-addressed below model/version/target."""
    m = verified.manifest
    return f"models/{m.name}/{m.version.replace(' ', '_')}/{verified.target}/{verified.sha256}/{m.package_filename}"


def add_package(
    db: Database,
    archive: Path,
    artifacts: ArtifactStore,
    trust_dir: Path,
    actor: str,
    *,
    expect_model: str | None = None,
    expect_version: str | None = None,
) -> int:
    """Verify ``archive``, store it and record it under its manifest's model and version.

    The model and version are created when missing. Returns the package id. ALREADY_EXISTS when the
    version has a package for the same target; FAILED_PRECONDITION when the version is no longer
    pending approval. Nothing is left behind on failure.
    """
    verified = verify_archive(archive, trust_dir)
    m = verified.manifest
    baseline = packaged_baseline(archive, m)
    if expect_model is not None and m.name != expect_model:
        raise InvalidArgument(f"the package is for model {m.name!r}, not {expect_model!r}")
    if expect_version is not None and m.version != expect_version:
        raise InvalidArgument(f"the package is version {m.version!r}, not {expect_version!r}")
    with db.session() as session:
        _check_can_add(session, verified)
    key = package_key(verified)
    artifacts.put_file(key, archive)
    try:
        with db.session() as session:
            now = db.now()
            _check_can_add(session, verified)
            model = session.scalar(select(Model).where(Model.name == m.name))
            if model is None:
                model = create_model(session, m.name, actor, now)
            version = _find_version(session, model, m.version)
            if version is None:
                version = create_version(session, m.name, m.version, actor, now)
            package = ModelPackage(
                model_version_id=version.id,
                target=verified.target,
                target_os=m.target.os,
                target_arch=m.target.arch,
                target_accelerator=m.target.accelerator,
                runtime=m.runtime.name,
                artifact_key=key,
                size=verified.size,
                sha256=verified.sha256,
                sha1=verified.sha1,
                manifest=m.to_dict(),
                signer=verified.signer,
                uploaded_at=now,
                uploaded_by=actor,
            )
            session.add(package)
            session.flush()
            package_id = package.id
            if baseline is not None and session.get(Baseline, version.id) is None:
                from edgefleet.server import drift  # drift builds on the registry

                drift.put_baseline(session, m.name, m.version, baseline, actor, now)
                log.info(
                    "model %s %s: the package's baseline.json is its drift baseline",
                    m.name,
                    m.version,
                    extra={"model": m.name, "version": m.version},
                )
    except BaseException:
        artifacts.delete(key)
        raise
    log.info(
        "stored package %s %s for %s (%d bytes) uploaded by %s",
        m.name,
        m.version,
        verified.target,
        verified.size,
        actor,
        extra={"model": m.name, "version": m.version},
    )
    return package_id


def packaged_baseline(archive: Path, manifest: Manifest) -> dict[str, Any] | None:
    """The drift baseline a verified package carries (``baseline.json``, edgefleet package build
    --baseline-inputs), checked against the signed manifest's digest; None when it has none.
    INVALID_ARGUMENT when it is too large or not a model summary."""
    import json
    import tarfile

    from edgefleet.monitoring import ModelSummary
    from edgefleet.monitoring.baseline import BASELINE_FILE, MAX_BASELINE_BYTES

    entry = next((f for f in manifest.files if f.path == BASELINE_FILE), None)
    if entry is None:
        return None
    if entry.size > MAX_BASELINE_BYTES:
        raise InvalidArgument(
            f"the package's {BASELINE_FILE} is {entry.size} bytes (at most {MAX_BASELINE_BYTES})"
        )
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.getmember(BASELINE_FILE)
        handle = tar.extractfile(member)
        data = handle.read(MAX_BASELINE_BYTES + 1) if handle is not None else b""
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise InvalidArgument(f"the package's {BASELINE_FILE} does not match its manifest digest")
    try:
        wire = json.loads(data)
        if not isinstance(wire, dict):
            raise InvalidArgument("not a JSON object")
        ModelSummary.from_wire(wire)
    except (ValueError, InvalidArgument) as exc:
        raise InvalidArgument(f"the package's {BASELINE_FILE} is not a model summary: {exc}") from exc
    return wire


def _check_can_add(session: Session, verified: VerifiedPackage) -> None:
    m = verified.manifest
    model = session.scalar(select(Model).where(Model.name == m.name))
    if model is None:
        return
    version = _find_version(session, model, m.version)
    if version is None:
        return
    if version.approval_status != Approval.PENDING.value:
        raise FailedPrecondition(
            f"version {m.version!r} of {m.name!r} is {version.approval_status}; packages can only be added while "
            "it is PendingManualApproval (upload a new version instead)"
        )
    if any(p.target == verified.target for p in version.packages):
        raise AlreadyExists(
            f"version {m.version!r} of {m.name!r} already has a package for target {verified.target}"
        )


def get_package(session: Session, package_id: int) -> ModelPackage:
    """A package by id; NOT_FOUND otherwise."""
    package = session.get(ModelPackage, package_id)
    if package is None:
        raise NotFound(f"package {package_id} does not exist")
    return package


def find_package(session: Session, model_name: str, version: str, target: str) -> ModelPackage:
    """The package of a version for ``target``; NOT_FOUND otherwise."""
    row = get_version(session, model_name, version)
    for package in row.packages:
        if package.target == target:
            return package
    raise NotFound(f"version {version!r} of {model_name!r} has no package for target {target!r}")
