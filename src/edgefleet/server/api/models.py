"""Operator API: the model registry (models, versions, packages, approval, aliases)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from edgefleet.core.errors import EdgefleetError, InvalidArgument
from edgefleet.server import registry
from edgefleet.server.api import render
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.api.ranges import serve_artifact
from edgefleet.server.api.state import AppState
from edgefleet.server.db.schema import ModelVersion
from edgefleet.server.validation import check_page_size

log = logging.getLogger(__name__)

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1", tags=["models"], responses=ERROR_RESPONSES)


@router.post("/models", status_code=201, response_model=s.ModelOut, summary="Create a model")
def create_model(body: s.CreateModelRequest, request: Request, actor: Actor) -> s.ModelOut:
    st = app_state(request)
    with st.db.session() as session:
        row = registry.create_model(session, body.ModelName, actor, st.db.now(), body.Description)
        return render.model(session, row)


@router.get("/models", response_model=s.ModelList, summary="List models")
def list_models(
    request: Request,
    actor: Actor,
    NameContains: str | None = None,
    MaxResults: int | None = None,
    NextToken: str | None = None,
) -> s.ModelList:
    st = app_state(request)
    limit = check_page_size(MaxResults, 50, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = registry.list_models(session, name_contains=NameContains, limit=limit, next_token=NextToken)
        return s.ModelList(Models=[render.model(session, m) for m in page.items], NextToken=page.next_token)


@router.get("/models/{name}", response_model=s.ModelOut, summary="Describe a model")
def describe_model(name: str, request: Request, actor: Actor) -> s.ModelOut:
    st = app_state(request)
    with st.db.session() as session:
        return render.model(session, registry.get_model(session, name))


@router.delete("/models/{name}", status_code=204, response_class=Response, summary="Delete a model")
def delete_model(name: str, request: Request, actor: Actor) -> Response:
    """Delete a model, its versions and their packages (refused while a deployment plan uses one)."""
    st = app_state(request)
    with st.db.session() as session:
        keys = registry.delete_model(session, name)
    _delete_artifacts(st, keys)
    return Response(status_code=204)


@router.post(
    "/models/{name}/versions", status_code=201, response_model=s.VersionOut, summary="Create a version"
)
def create_version(name: str, body: s.CreateVersionRequest, request: Request, actor: Actor) -> s.VersionOut:
    st = app_state(request)
    with st.db.session() as session:
        row = registry.create_version(session, name, body.ModelVersion, actor, st.db.now(), body.Description)
        return render.version(row, st.artifacts)


@router.get("/models/{name}/versions", response_model=s.VersionList, summary="List versions (newest first)")
def list_versions(
    name: str,
    request: Request,
    actor: Actor,
    ApprovalStatus: str | None = None,
    MaxResults: int | None = None,
    NextToken: str | None = None,
) -> s.VersionList:
    st = app_state(request)
    limit = check_page_size(MaxResults, 50, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = registry.list_versions(
            session, name, approval_status=ApprovalStatus, limit=limit, next_token=NextToken
        )
        return s.VersionList(
            ModelVersions=[render.version(v, st.artifacts) for v in page.items], NextToken=page.next_token
        )


@router.get("/models/{name}/versions/{version}", response_model=s.VersionOut, summary="Describe a version")
def describe_version(name: str, version: str, request: Request, actor: Actor) -> s.VersionOut:
    st = app_state(request)
    with st.db.session() as session:
        return render.version(registry.get_version(session, name, version), st.artifacts)


@router.delete(
    "/models/{name}/versions/{version}", status_code=204, response_class=Response, summary="Delete a version"
)
def delete_version(name: str, version: str, request: Request, actor: Actor) -> Response:
    st = app_state(request)
    with st.db.session() as session:
        keys = registry.delete_version(session, name, version)
    _delete_artifacts(st, keys)
    return Response(status_code=204)


@router.put(
    "/models/{name}/versions/{version}/approval",
    response_model=s.VersionOut,
    summary="Set the approval status",
)
def set_approval(
    name: str, version: str, body: s.ApprovalRequest, request: Request, actor: Actor
) -> s.VersionOut:
    """PendingManualApproval / Approved / Rejected, recorded with who (the token's name) and when."""
    st = app_state(request)
    with st.db.session() as session:
        row = registry.set_approval(
            session, name, version, body.ApprovalStatus, actor, st.db.now(), body.Reason
        )
        return render.version(row, st.artifacts)


@router.put(
    "/models/{name}/aliases/{alias}", response_model=s.ModelOut, summary="Point an alias at a version"
)
def set_alias(name: str, alias: str, body: s.AliasRequest, request: Request, actor: Actor) -> s.ModelOut:
    st = app_state(request)
    with st.db.session() as session:
        registry.set_alias(session, name, alias, body.ModelVersion, actor, st.db.now())
        return render.model(session, registry.get_model(session, name))


@router.delete("/models/{name}/aliases/{alias}", response_model=s.ModelOut, summary="Remove an alias")
def delete_alias(name: str, alias: str, request: Request, actor: Actor) -> s.ModelOut:
    st = app_state(request)
    with st.db.session() as session:
        registry.delete_alias(session, name, alias)
        return render.model(session, registry.get_model(session, name))


@router.post(
    "/packages",
    status_code=201,
    response_model=s.VersionOut,
    summary="Upload a signed package",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_package(
    request: Request,
    actor: Actor,
    FileName: Annotated[
        str | None, Query(description="the archive's file name, used in messages about it")
    ] = None,
) -> s.VersionOut:
    """The body is a package archive (``edgefleet package build``). It is verified against the server's
    trust store before it is stored; model and version come from its manifest and are created when
    missing. One package per target (os-arch-accelerator) per version. The body's size is capped by
    the request guard (``Limits.max_package_bytes``)."""
    st = app_state(request)
    with tempfile.TemporaryDirectory(prefix="edgefleet-upload-") as directory:
        # named like the uploaded file, so that what the checks say about it names the user's file
        path = Path(directory) / upload_file_name(FileName)
        size = 0
        with path.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                await run_in_threadpool(out.write, chunk)
        if size == 0:
            raise InvalidArgument("the request body is empty: send the package archive as the body")
        return await run_in_threadpool(_store_package, st, path, actor)


#: the name an upload is known by when the client sends none
DEFAULT_UPLOAD_NAME = "uploaded-package.tar.gz"


def upload_file_name(name: str | None) -> str:
    """A safe local file name for an upload called ``name`` by its client (its last path part)."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    # at most 200 bytes: file systems allow 255 bytes, not characters
    base = "".join(c for c in base if c.isprintable()).encode()[:200].decode(errors="ignore")
    return base if base.strip(". ") else DEFAULT_UPLOAD_NAME


def _store_package(st: AppState, path: Path, actor: str) -> s.VersionOut:
    package_id = registry.add_package(st.db, path, st.artifacts, st.config.resolved_trust_dir, actor)
    with st.db.session() as session:
        package = registry.get_package(session, package_id)
        version = session.get(ModelVersion, package.model_version_id)
        assert version is not None
        return render.version(version, st.artifacts)


@router.get(
    "/models/{name}/versions/{version}/packages/{target}", summary="Download a package (Range supported)"
)
def download_package(name: str, version: str, target: str, request: Request, actor: Actor) -> Response:
    st = app_state(request)
    with st.db.session() as session:
        package = registry.find_package(session, name, version, target)
        key, size, sha256 = package.artifact_key, package.size, package.sha256
        filename = key.rsplit("/", 1)[-1]
    return serve_artifact(request, st.artifacts, key, size, sha256, filename)


def _delete_artifacts(st: AppState, keys: list[str]) -> None:
    for key in keys:
        try:
            st.artifacts.delete(key)
        except EdgefleetError:  # the records are gone; a leftover object only wastes space
            log.exception("could not delete artifact %s", key)
