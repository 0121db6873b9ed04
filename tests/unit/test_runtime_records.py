"""runtimes.base.RUNTIMES: one record per runtime, read by the agent and the compiler alike."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

from edgefleet.core.errors import InvalidArgument
from edgefleet.runtimes.base import RUNTIMES, canonical_runtime, get_backend, known_backends


@pytest.mark.parametrize(
    ("alias", "name"), [("tflite", "litert"), ("ort", "onnxruntime"), ("tvm", "tvm"), ("x", "x")]
)
def test_aliases_resolve_once_for_everyone(alias: str, name: str) -> None:
    assert canonical_runtime(alias) == name


def test_every_record_names_importable_parts() -> None:
    assert known_backends() == sorted(RUNTIMES)
    for record in RUNTIMES.values():
        module, _, cls = record.backend.partition(":")
        assert module.startswith("edgefleet.runtimes.") and cls
        assert importlib.util.find_spec(module) is not None
        if record.builder is not None:
            builder_module, _, func = record.builder.partition(":")
            assert importlib.util.find_spec(builder_module) is not None and func
    assert RUNTIMES["null"].builder is None  # nothing to compile for the null runtime


def test_get_backend_takes_an_alias() -> None:
    assert get_backend("ort") is get_backend("onnxruntime")


def test_the_compiler_reads_aliases_and_builders_from_the_records() -> None:
    pytest.importorskip("onnx", reason="the compiler extra is not installed")
    from edgefleet.compiler import job
    from edgefleet.compiler.targets import get_target

    target = get_target("linux-x86_64")
    assert {r.name: r.builder for r in RUNTIMES.values() if r.builder} == job.BUILDERS
    for record in RUNTIMES.values():
        for alias in record.aliases:
            if record.name in target.backends:
                assert job._check_backend(alias, target) == record.name
    with pytest.raises(InvalidArgument, match="unknown backend 'nope'"):
        job._check_backend("nope", target)
