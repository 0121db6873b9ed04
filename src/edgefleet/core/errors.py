"""One exception root with a closed set of codes, and the single table mapping codes to gRPC/HTTP.

Foreign exceptions (grpc, onnxruntime, cryptography, sqlalchemy, botocore) are translated at the
adapter that calls the foreign library, with ``raise EdgefleetError(...) from exc``.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """Error codes. Values are the gRPC status code names so logs and wire errors read the same."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


# code -> (gRPC status code number, HTTP status). The gRPC numbers are the standard ones from
# grpc/status.proto, kept here so the core does not import grpc.
_STATUS: dict[Code, tuple[int, int]] = {
    Code.INVALID_ARGUMENT: (3, 400),
    Code.DEADLINE_EXCEEDED: (4, 504),
    Code.NOT_FOUND: (5, 404),
    Code.ALREADY_EXISTS: (6, 409),
    Code.PERMISSION_DENIED: (7, 403),
    Code.RESOURCE_EXHAUSTED: (8, 429),
    Code.FAILED_PRECONDITION: (9, 412),
    Code.ABORTED: (10, 409),
    Code.OUT_OF_RANGE: (11, 400),
    Code.UNIMPLEMENTED: (12, 501),
    Code.INTERNAL: (13, 500),
    Code.UNAVAILABLE: (14, 503),
    Code.UNAUTHENTICATED: (16, 401),
}


def grpc_status_number(code: Code) -> int:
    """The gRPC status code number for ``code``."""
    return _STATUS[code][0]


def http_status(code: Code) -> int:
    """The HTTP status for ``code``."""
    return _STATUS[code][1]


def code_from_grpc_number(number: int) -> Code:
    """The code for a gRPC status number; unknown numbers map to INTERNAL."""
    for code, (grpc_number, _) in _STATUS.items():
        if grpc_number == number:
            return code
    return Code.INTERNAL


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose. ``message`` says what was wrong."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def grpc_code(self) -> int:
        """The gRPC status code number of this error."""
        return grpc_status_number(self.code)

    @property
    def http_status(self) -> int:
        """The HTTP status of this error."""
        return http_status(self.code)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


class InvalidArgument(EdgefleetError):
    """The caller passed something malformed."""

    code = Code.INVALID_ARGUMENT


class NotFound(EdgefleetError):
    """The named thing does not exist."""

    code = Code.NOT_FOUND


class AlreadyExists(EdgefleetError):
    """The name or id is taken."""

    code = Code.ALREADY_EXISTS


class ResourceExhausted(EdgefleetError):
    """A bounded resource (memory budget, capture spool, queue) is full."""

    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(EdgefleetError):
    """The request is well formed but the system is not in a state to honour it."""

    code = Code.FAILED_PRECONDITION


class OutOfRange(EdgefleetError):
    """A value is outside the range the operation accepts."""

    code = Code.OUT_OF_RANGE


class PermissionDenied(EdgefleetError):
    """The caller may not do this."""

    code = Code.PERMISSION_DENIED


class Unauthenticated(EdgefleetError):
    """The caller did not prove who it is (missing, invalid or revoked credentials)."""

    code = Code.UNAUTHENTICATED


class Unavailable(EdgefleetError):
    """A dependency (server, agent) cannot be reached now; retrying may help."""

    code = Code.UNAVAILABLE


class SignatureError(FailedPrecondition):
    """A package's signature, certificate chain or digests did not verify."""


class PackageFormatError(InvalidArgument):
    """A package or manifest is malformed."""
