"""The agent over gRPC (what every Edge Manager client uses): one channel, every RPC by name.

A failed call raises the :class:`EdgefleetError` subclass of its gRPC status code
(:func:`edgefleet.core.errors.error_for`: ``NOT_FOUND`` -> :class:`NotFound`, ...), carrying the
agent's message, with the :class:`grpc.RpcError` as its cause.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import grpc

from edgefleet.core.errors import (
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    code_from_grpc_number,
    error_for,
)
from edgefleet.protocol.agent.codec import GRPC_CHANNEL_OPTIONS
from edgefleet.protocol.agent.proto import agent_pb2, agent_pb2_grpc, extensions_pb2, extensions_pb2_grpc


def grpc_target(address: str) -> str:
    """The gRPC target for an agent address: ``unix:///path.sock``, ``unix:path`` or a plain socket path.

    Other gRPC targets with a scheme (``dns:///host:port``, ``ipv4:127.0.0.1:50051``) pass through.
    """
    if not address:
        raise InvalidArgument("agent address is empty (want unix:///path.sock or a socket path)")
    if address.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")) or "://" in address:
        return address
    return "unix:" + os.path.abspath(address)


def error_from_rpc(exc: grpc.RpcError, address: str) -> EdgefleetError:
    """The :class:`EdgefleetError` for a failed call, by status code, with the agent's message."""
    status = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    if status is None:
        return EdgefleetError(f"call to the agent at {address} failed: {exc}")
    code = code_from_grpc_number(status.value[0])
    message = details or status.name
    if code is Code.UNAVAILABLE:
        message = f"agent at {address} is unavailable: {message}"
    elif code is Code.INTERNAL and status is not grpc.StatusCode.INTERNAL:
        message = f"{message} (gRPC {status.name})"
    return error_for(code, message)


class GrpcTransport:
    """The RPCs of both agent services (``Agent`` and ``AgentExtensions``) over one gRPC channel to
    ``address``; ``timeout``: seconds each call may take (None: no deadline)."""

    def __init__(self, address: str, *, timeout: float | None = None) -> None:
        self.address = address
        self.target = grpc_target(address)
        self._timeout = timeout
        self._channel = grpc.insecure_channel(self.target, options=list(GRPC_CHANNEL_OPTIONS))
        stubs = (
            (agent_pb2_grpc.AgentStub(self._channel), agent_pb2.DESCRIPTOR.services_by_name["Agent"]),  # type: ignore[no-untyped-call]
            (
                extensions_pb2_grpc.AgentExtensionsStub(self._channel),  # type: ignore[no-untyped-call]
                extensions_pb2.DESCRIPTOR.services_by_name["AgentExtensions"],
            ),
        )
        self._methods: dict[str, Callable[..., Any]] = {
            m.name: getattr(stub, m.name) for stub, service in stubs for m in service.methods
        }

    def call(self, method: str, request: Any) -> Any:
        """The response of RPC ``method`` (``LoadModel``, ``GetHealth``, ...) to ``request``."""
        try:
            return self._methods[method](request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self.address) from exc
        except ValueError as exc:  # grpc raises it for a channel closed under the call
            raise FailedPrecondition(f"the AgentClient is closed: {exc}") from exc

    def wait_ready(self, timeout: float) -> None:
        """Block until the agent's socket accepts connections; UNAVAILABLE after ``timeout`` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            raise Unavailable(f"agent at {self.address} did not become reachable within {timeout} s") from exc

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()
