"""core/errors: one class per code, the one gRPC/HTTP table, the JSON error body and its decoder."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.core.errors import (
    ERROR_CLASSES,
    Aborted,
    Code,
    DeadlineExceeded,
    EdgefleetError,
    Internal,
    InvalidArgument,
    NotFound,
    PackageFormatError,
    ResourceExhausted,
    SignatureError,
    Unavailable,
    Unimplemented,
    code_from_grpc_number,
    code_from_http,
    error_body,
    error_for,
    error_from_http,
    grpc_status_number,
    http_status,
)

codes = st.sampled_from(list(Code))
# messages as a server would send them: any text that encodes as UTF-8
messages = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)


def test_every_code_has_its_own_class() -> None:
    assert set(ERROR_CLASSES) == set(Code)
    for code, cls in ERROR_CLASSES.items():
        assert cls.code is code and cls.__bases__ == (EdgefleetError,)
    assert len(set(ERROR_CLASSES.values())) == len(Code)
    # the codes that had none before
    assert ERROR_CLASSES[Code.DEADLINE_EXCEEDED] is DeadlineExceeded
    assert ERROR_CLASSES[Code.ABORTED] is Aborted
    assert ERROR_CLASSES[Code.UNIMPLEMENTED] is Unimplemented
    assert ERROR_CLASSES[Code.INTERNAL] is Internal


def test_refinements_do_not_replace_the_class_of_their_code() -> None:
    class Refined(NotFound):
        code = Code.NOT_FOUND

    assert ERROR_CLASSES[Code.NOT_FOUND] is NotFound
    assert issubclass(SignatureError, ERROR_CLASSES[Code.FAILED_PRECONDITION])
    assert issubclass(PackageFormatError, ERROR_CLASSES[Code.INVALID_ARGUMENT])
    assert isinstance(Refined("x"), NotFound)


@given(codes, messages)
def test_error_for_raises_the_class_of_the_code(code: Code, message: str) -> None:
    err = error_for(code, message)
    assert type(err) is ERROR_CLASSES[code]
    assert err.code is code and err.message == message and str(err) == f"{code.value}: {message}"


@settings(max_examples=200)
@given(codes, messages)
def test_code_to_http_to_class_round_trips(code: Code, message: str) -> None:
    err = error_for(code, message)
    body = json.dumps(error_body(err.code, err.message)).encode()
    back = error_from_http(err.http_status, body)
    assert type(back) is type(err) and back.code is code
    if code is Code.UNAVAILABLE:
        assert back.message == f"server unavailable (HTTP 503): {message}"
    else:
        assert back.message == message
    assert error_from_http(err.http_status, body, "doing it").message.startswith("doing it: ")


@given(codes)
def test_code_to_grpc_to_class_round_trips(code: Code) -> None:
    number = grpc_status_number(code)
    assert number == grpc.StatusCode[code.name].value[0]  # the standard numbers, without importing grpc
    assert code_from_grpc_number(number) is code
    assert type(error_for(code_from_grpc_number(number), "m")) is ERROR_CLASSES[code]
    assert error_for(code, "m").grpc_code == number


def test_unknown_grpc_numbers_are_internal() -> None:
    assert code_from_grpc_number(2) is Code.INTERNAL  # UNKNOWN
    assert code_from_grpc_number(99) is Code.INTERNAL


def test_a_status_without_an_error_body_stands_for_its_first_code() -> None:
    firsts = {}
    for code in Code:
        firsts.setdefault(http_status(code), code)
    for status, code in firsts.items():
        if status not in (502, 503, 504):
            assert code_from_http(status) is code
    assert code_from_http(400) is Code.INVALID_ARGUMENT and code_from_http(409) is Code.ALREADY_EXISTS
    # statuses answered besides a code's own
    assert code_from_http(413) is Code.RESOURCE_EXHAUSTED
    assert code_from_http(416) is Code.OUT_OF_RANGE
    assert code_from_http(405) is Code.UNIMPLEMENTED
    assert code_from_http(418) is Code.INVALID_ARGUMENT and code_from_http(599) is Code.INTERNAL


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_answer_without_our_body_is_unavailable(status: int) -> None:
    err = error_from_http(status, b"<html>Bad Gateway</html>", "polling")
    assert type(err) is Unavailable
    assert err.message == f"polling: server unavailable (HTTP {status}: <html>Bad Gateway</html>)"
    # with the server's own body its code wins (a deadline is not an outage)
    own = error_from_http(504, json.dumps(error_body(Code.DEADLINE_EXCEEDED, "slow")).encode())
    assert type(own) is DeadlineExceeded and own.message == "slow"


@pytest.mark.parametrize(
    ("body", "cls", "message"),
    [
        (b"", InvalidArgument, "HTTP 400"),
        (b"not json \xff", InvalidArgument, "HTTP 400: not json \ufffd"),
        (b'{"error": {"code": "NO_SUCH_CODE", "message": "odd"}}', InvalidArgument, "HTTP 400: odd"),
        (b'{"error": "flat"}', InvalidArgument, 'HTTP 400: {"error": "flat"}'),
        (b'{"detail": "Method Not Allowed"}', InvalidArgument, "HTTP 400: Method Not Allowed"),
        (b"[1, 2]", InvalidArgument, "HTTP 400: [1, 2]"),
    ],
)
def test_bodies_that_are_not_an_error_body_fall_back_to_the_status(
    body: bytes, cls: type[EdgefleetError], message: str
) -> None:
    err = error_from_http(400, body)
    assert type(err) is cls and err.message == message


def test_a_long_foreign_body_is_cut() -> None:
    err = error_from_http(500, b"x" * 10_000)
    assert type(err) is Internal and err.message == "HTTP 500: " + "x" * 200


def test_413_with_resource_exhausted_decodes_to_its_class() -> None:
    body = json.dumps(error_body(Code.RESOURCE_EXHAUSTED, "too big")).encode()
    assert type(error_from_http(413, body)) is ResourceExhausted


def test_a_class_may_answer_another_status_than_its_code() -> None:
    class TooLarge(ResourceExhausted):
        status_override = 413

    assert TooLarge("x").http_status == 413 and ResourceExhausted("x").http_status == 429
    assert (
        TooLarge("x").code is Code.RESOURCE_EXHAUSTED
        and ERROR_CLASSES[Code.RESOURCE_EXHAUSTED] is ResourceExhausted
    )


def test_the_error_body_encodes_as_utf8_whatever_the_message() -> None:
    body = error_body(Code.INVALID_ARGUMENT, "bad name \udcff")
    assert body == {"error": {"code": "INVALID_ARGUMENT", "message": "bad name \\udcff"}}
    json.dumps(body).encode("utf-8")


def test_core_errors_imports_nothing_above_it() -> None:
    code = (
        "import sys, edgefleet.core.errors; "
        "print(sorted(m for m in sys.modules if m.startswith(('edgefleet.', 'grpc', 'httpx', 'fastapi'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.replace("'", '"')) == ["edgefleet.core", "edgefleet.core.errors"]
