"""One exception root with a closed set of codes, one class per code, the single table mapping codes
to gRPC/HTTP, and the one JSON error body with its decoder (so every client raises the code's class).

Foreign exceptions (grpc, onnxruntime, cryptography, sqlalchemy, botocore) are translated at the
adapter that calls the foreign library, with ``raise EdgefleetError(...) from exc``.
"""

from __future__ import annotations

import enum
import errno
import json
import os
from typing import Any, ClassVar


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

# HTTP status -> code when no error body names one: the first code of each status above, the
# statuses answered besides a code's own (413 body over its cap, 416 Range not satisfiable, 405/411
# from the framework), and the gateway ones, which from a proxy mean the server is unreachable.
_CODE_OF_HTTP: dict[int, Code] = {
    **{http: code for code, (_, http) in reversed(_STATUS.items())},
    405: Code.UNIMPLEMENTED,
    411: Code.INVALID_ARGUMENT,
    413: Code.RESOURCE_EXHAUSTED,
    416: Code.OUT_OF_RANGE,
    502: Code.UNAVAILABLE,
    504: Code.UNAVAILABLE,
}


def grpc_status_number(code: Code) -> int:
    """The gRPC status code number for ``code``."""
    return _STATUS[code][0]


def http_status(code: Code) -> int:
    """The HTTP status for ``code``."""
    return _STATUS[code][1]


def code_from_grpc_number(number: int) -> Code:
    """The code for a gRPC status number; unknown numbers map to INTERNAL."""
    return next((code for code, (grpc, _) in _STATUS.items() if grpc == number), Code.INTERNAL)


def code_from_http(status: int) -> Code:
    """The code of an HTTP error status whose body names none (else 5xx INTERNAL, 4xx INVALID_ARGUMENT)."""
    return _CODE_OF_HTTP.get(status, Code.INTERNAL if status >= 500 else Code.INVALID_ARGUMENT)


#: the class raised for each code: the first subclass that sets it (SignatureError & co. refine one)
ERROR_CLASSES: dict[Code, type[EdgefleetError]] = {}


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose. ``message`` says what was wrong."""

    code: Code = Code.INTERNAL
    #: the HTTP status answered for this class when it is not its code's usual one
    status_override: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            ERROR_CLASSES.setdefault(cls.code, cls)

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
        return self.status_override or http_status(self.code)

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


class DeadlineExceeded(EdgefleetError):
    """The operation did not finish within its deadline; it may still complete on the other side."""

    code = Code.DEADLINE_EXCEEDED


class Aborted(EdgefleetError):
    """The operation lost a race with a concurrent one (a conflict); retrying the whole step may help."""

    code = Code.ABORTED


class Unimplemented(EdgefleetError):
    """The operation is not implemented or not supported by this side."""

    code = Code.UNIMPLEMENTED


class Internal(EdgefleetError):
    """A bug or an unexpected failure on the other side (its log says more)."""

    code = Code.INTERNAL


class SignatureError(FailedPrecondition):
    """A package's signature, certificate chain or digests did not verify."""


class PackageFormatError(InvalidArgument):
    """A package or manifest is malformed."""


#: How many characters of a client-supplied string an error message quotes (see :func:`quoted`).
QUOTE_LIMIT = 100


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with "…" when something was cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def quoted(value: str | bytes | object, limit: int = QUOTE_LIMIT) -> str:
    """A client-supplied value as an error message quotes it: ``repr`` of at most ``limit``
    characters, with "…" when it was longer.

    Every message that echoes client input goes through here: a peer may send a name of any length,
    and an error that quoted it whole could exceed what the transport carries (gRPC's 8 KiB of
    metadata: the caller would see RESOURCE_EXHAUSTED instead of the real code).
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif not isinstance(value, str):
        value = str(value)
    return repr(shorten(value, limit))


def os_error(exc: OSError, path: object, action: str = "read") -> EdgefleetError:
    """The :class:`EdgefleetError` for an OS error met while using ``path`` a client named.

    A missing path is NOT_FOUND; a path the system cannot take (too long, a symlink loop) is
    INVALID_ARGUMENT; a path that exists but cannot be used by this process (permissions, an I/O
    error) is FAILED_PRECONDITION. The message quotes the path shortened and says what happened in
    words, never a raw ``[Errno N]`` text.
    """
    where = quoted(path)
    number = exc.errno
    reason = os.strerror(number) if number is not None else str(exc)
    if number in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"nothing at {where} (a path component is missing or is not a directory)")
    if number == errno.ENAMETOOLONG:
        return InvalidArgument(
            f"the path {where} is too long for this system (a name may have 255 bytes, a path 4095)"
        )
    if number == errno.ELOOP:
        return InvalidArgument(f"the path {where} has too many levels of symbolic links")
    if number in (errno.EACCES, errno.EPERM):
        return FailedPrecondition(
            f"permission denied: this process (uid {os.geteuid()}) may not {action} {where}"
        )
    return FailedPrecondition(f"cannot {action} {where}: {reason.lower()}")


#: Longest error message sent to a peer. Messages quote client input shortened (:func:`quoted`),
#: so this only guards against one built from many parts: gRPC clients take 8 KiB of metadata.
MAX_WIRE_MESSAGE = 2048


def wire_message(exc: EdgefleetError) -> str:
    """The message of ``exc`` as a server sends it to its peer (at most :data:`MAX_WIRE_MESSAGE`)."""
    return shorten(exc.message, MAX_WIRE_MESSAGE)


def error_for(code: Code, message: str) -> EdgefleetError:
    """The error of ``code``'s class with ``message`` (what a client raises for a wire error)."""
    return ERROR_CLASSES[code](message)


def error_body(code: Code, message: str) -> dict[str, Any]:
    """The JSON body of an HTTP error answer."""
    # a message quoting client text must still encode as UTF-8 (an unpaired surrogate would not)
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"error": {"code": code.value, "message": message}}


def error_from_http(status: int, body: bytes, context: str = "") -> EdgefleetError:
    """The error an HTTP error answer stands for: its error body's code and message, else the code of
    ``status`` (:func:`code_from_http`) and the body's start; ``context`` (what was done) prefixes it."""
    code: Code | None = None
    message = ""
    try:
        parsed = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        parsed = None
    detail = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(detail, dict):
        code = Code.__members__.get(str(detail.get("code")))
        message = str(detail.get("message", ""))
    elif isinstance(parsed, dict) and "detail" in parsed:  # a framework's own error shape
        message = str(parsed["detail"])
    if code is None:
        code = code_from_http(status)
        message = f"HTTP {status}: {message or body[:200].decode('utf-8', 'replace')}".removesuffix(": ")
        if code is Code.UNAVAILABLE:
            message = f"server unavailable ({message})"
    elif code is Code.UNAVAILABLE:
        message = f"server unavailable (HTTP {status}): {message}"
    return error_for(code, f"{context}: {message}" if context else message)
