"""Device fleets: create / update / describe / list / delete, with their capture output config."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import DeploymentPlan, Device, Fleet
from edgefleet.server.validation import Page, validate_name, validate_output_location, validate_tags

SORT_KEYS = {"NAME": Fleet.name, "CREATION_TIME": Fleet.created_at, "LAST_MODIFIED_TIME": Fleet.updated_at}


@dataclass(frozen=True)
class FleetSpec:
    """What CreateDeviceFleet takes."""

    name: str
    output_location: str
    description: str | None = None
    role_arn: str | None = None
    kms_key_id: str | None = None
    tags: dict[str, str] | None = None


def create_fleet(session: Session, spec: FleetSpec, now: datetime) -> Fleet:
    """Create a fleet; ALREADY_EXISTS if the name is taken."""
    validate_name(spec.name, "fleet name")
    _check_description(spec.description)
    _check_arns(spec.role_arn, spec.kms_key_id)
    if session.scalar(select(Fleet.id).where(Fleet.name == spec.name)) is not None:
        raise AlreadyExists(f"fleet {spec.name!r} already exists")
    fleet = Fleet(
        name=spec.name,
        description=spec.description,
        role_arn=spec.role_arn,
        output_location=validate_output_location(spec.output_location),
        kms_key_id=spec.kms_key_id,
        tags=validate_tags(spec.tags),
        created_at=now,
        updated_at=now,
    )
    session.add(fleet)
    session.flush()
    return fleet


def get_fleet(session: Session, name: str, *, lock: bool = False) -> Fleet:
    """The fleet called ``name``; NOT_FOUND otherwise."""
    stmt = select(Fleet).where(Fleet.name == name)
    if lock:
        stmt = stmt.with_for_update()
    fleet = session.scalar(stmt)
    if fleet is None:
        raise NotFound(f"fleet {name!r} does not exist")
    return fleet


def update_fleet(
    session: Session,
    name: str,
    now: datetime,
    *,
    output_location: str | None = None,
    description: str | None = None,
    role_arn: str | None = None,
    kms_key_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Fleet:
    """Change the given fields of a fleet (None leaves a field as it is)."""
    fleet = get_fleet(session, name, lock=True)
    _check_arns(role_arn, kms_key_id)
    if output_location is not None:
        fleet.output_location = validate_output_location(output_location)
    if description is not None:
        _check_description(description)
        fleet.description = description
    if role_arn is not None:
        fleet.role_arn = role_arn
    if kms_key_id is not None:
        fleet.kms_key_id = kms_key_id
    if tags is not None:
        fleet.tags = validate_tags(tags)
    fleet.updated_at = now
    return fleet


def list_fleets(
    session: Session,
    *,
    name_contains: str | None = None,
    sort_by: str = "NAME",
    sort_order: str = "Ascending",
    limit: int,
    next_token: str | None = None,
) -> Page[Fleet]:
    """Fleets, filtered by a name substring and sorted."""
    if sort_by not in SORT_KEYS:
        raise InvalidArgument(f"SortBy {sort_by!r} is invalid (known: {', '.join(SORT_KEYS)})")
    if sort_order not in ("Ascending", "Descending"):
        raise InvalidArgument(f"SortOrder {sort_order!r} is invalid (known: Ascending, Descending)")
    column = SORT_KEYS[sort_by]
    stmt = select(Fleet).order_by(column.asc() if sort_order == "Ascending" else column.desc(), Fleet.id)
    if name_contains:
        stmt = stmt.where(Fleet.name.contains(name_contains, autoescape=True))
    return paginate(session, stmt, limit, next_token)


def delete_fleet(session: Session, name: str) -> None:
    """Delete a fleet that has no registered devices and no deployment plans (FAILED_PRECONDITION otherwise)."""
    fleet = get_fleet(session, name, lock=True)
    devices = session.scalar(
        select(func.count())
        .select_from(Device)
        .where(Device.fleet_id == fleet.id, Device.deregistered_at.is_(None))
    )
    if devices:
        raise FailedPrecondition(
            f"fleet {name!r} still has {devices} registered device(s); deregister them first"
        )
    plans = session.scalar(
        select(func.count()).select_from(DeploymentPlan).where(DeploymentPlan.fleet_id == fleet.id)
    )
    if plans:
        raise FailedPrecondition(f"fleet {name!r} still has {plans} deployment plan(s); delete them first")
    session.delete(fleet)


def _check_arns(*values: str | None) -> None:
    for value in values:
        if value is not None and not 1 <= len(value) <= 2048:
            raise InvalidArgument("RoleArn and KmsKeyId must be 1-2048 characters")


def _check_description(description: str | None) -> None:
    if description is not None and not 1 <= len(description) <= 800:
        raise InvalidArgument("fleet description must be 1-800 characters")
