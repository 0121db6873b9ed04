"""The operator client against a real server raises the class of each error's code, so callers can
``except NotFound`` (it used to raise the base class with the code as an attribute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.core.errors import AlreadyExists, Code, NotFound, ResourceExhausted, Unauthenticated
from edgefleet.opclient.client import FleetClient
from edgefleet.opclient.config import ClientConfig


def test_an_unknown_model_is_not_found(op: Any) -> None:
    # pytest.raises(NotFound) is ``except NotFound``: the base class would not match
    with pytest.raises(NotFound, match="no-such-model") as info:
        op.describe_model("no-such-model")
    assert info.value.code is Code.NOT_FOUND


def test_a_taken_name_is_already_exists(op: Any) -> None:
    op.create_model("taken-model")
    with pytest.raises(AlreadyExists, match="taken-model"):
        op.create_model("taken-model")


def test_a_body_over_the_cap_is_resource_exhausted(op: Any) -> None:
    # answered 413 (BodyTooLarge), decoded by its body's code
    with pytest.raises(ResourceExhausted, match="accepts at most 1048576 bytes") as info:
        op.request(
            "POST",
            "/api/v1/models",
            content=b" " * (2 * 1024 * 1024),
            headers={"Content-Type": "application/json"},
        )
    assert info.value.code is Code.RESOURCE_EXHAUSTED


def test_a_bad_token_is_unauthenticated(fleet_server: Any) -> None:
    endpoints = fleet_server.endpoints
    config = ClientConfig(endpoints.api_url, "not-a-token", Path(endpoints.ca_cert))
    with FleetClient(config) as client, pytest.raises(Unauthenticated, match="token"):
        next(client.list_models())
