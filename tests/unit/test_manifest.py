"""Manifest (format v1): validation rules, canonical bytes and the JSON round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgefleet.core.errors import Code, PackageFormatError
from edgefleet.core.manifest import (
    CONTROL_FILES,
    FileEntry,
    Manifest,
    Runtime,
    Target,
    validate_artifact_path,
    validate_model_name,
    validate_version,
)
from edgefleet.core.tensors import DataType, TensorSpec

SHA = "ab" * 32


def sample(**changes: object) -> Manifest:
    fields: dict[str, object] = {
        "name": "digits-classifier",
        "version": "1.0 beta_2",
        "runtime": Runtime("onnxruntime", "1.17"),
        "target": Target("linux", "x86_64", "none"),
        "model_file": "model.onnx",
        "inputs": (TensorSpec("x", DataType.FLOAT32, (-1, 64)),),
        "outputs": (TensorSpec("probabilities", DataType.FLOAT32, (-1, 10)),),
        "files": (FileEntry("model.onnx", 1234, SHA), FileEntry("lib/extra.bin", 0, "cd" * 32)),
        "created": "2026-01-02T03:04:05Z",
        "provenance": {"source_sha256": SHA, "edgefleet_version": "0.1.0", "note": "Ünïcode ✓"},
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_round_trip_preserves_every_field() -> None:
    manifest = sample()
    parsed = Manifest.from_bytes(manifest.canonical_bytes())
    assert parsed == manifest
    assert parsed.canonical_bytes() == manifest.canonical_bytes()


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    data = sample().canonical_bytes()
    text = data.decode("utf-8")
    assert "Ünïcode ✓" in text  # not \u-escaped
    assert ": " not in text
    assert ", " not in text.replace("1.0 beta_2", "")
    assert "\n" not in text
    raw = json.loads(text)
    assert list(raw) == sorted(raw)
    assert data == json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_package_filename_replaces_spaces() -> None:
    assert sample().package_filename == "digits-classifier-1.0_beta_2.tar.gz"


@pytest.mark.parametrize("name", ["a", "A1", "a-b", "a--b-c", "x" * 63, "0"])
def test_valid_model_names(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "a_b", "a b", "a.b", "x" * 64, "abc\n", "é"])
def test_invalid_model_names(name: str) -> None:
    with pytest.raises(PackageFormatError, match="model name") as info:
        validate_model_name(name)
    assert info.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize("version", ["1", "1.0", "1.0 beta_2", "x" * 30])
def test_valid_versions(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize("version", ["", "1/0", "1-0", "x" * 31, "1.0\n", "v:1"])
def test_invalid_versions(version: str) -> None:
    with pytest.raises(PackageFormatError, match="model version"):
        validate_version(version)


@pytest.mark.parametrize("path", ["model.onnx", "lib/libmodel.so", "a/b/c_1+2-3.bin", "_x"])
def test_valid_artifact_paths(path: str) -> None:
    assert validate_artifact_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/abs",
        "/etc/passwd",
        "../x",
        "a/../b",
        "a//b",
        "./a",
        "a/.",
        "a\\b",
        ".hidden",
        "a\n",
        "a b",
        "a/",
    ],
)
def test_unsafe_artifact_paths(path: str) -> None:
    with pytest.raises(PackageFormatError, match="artifact path"):
        validate_artifact_path(path)


@pytest.mark.parametrize("path", sorted(CONTROL_FILES))
def test_artifact_path_cannot_be_a_control_file(path: str) -> None:
    with pytest.raises(PackageFormatError, match="control file"):
        validate_artifact_path(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"files": (FileEntry("model.onnx", 1, SHA), FileEntry("model.onnx", 1, SHA))}, "listed twice"),
        ({"model_file": "other.onnx"}, "not among the manifest's files"),
        ({"files": (FileEntry("model.onnx", -1, SHA),)}, "bad size or sha256"),
        ({"files": (FileEntry("model.onnx", 1, SHA.upper()),)}, "bad size or sha256"),
        ({"files": (FileEntry("model.onnx", 1, SHA + "\n"),)}, "bad size or sha256"),
        ({"files": (FileEntry("model.onnx", 1, SHA), FileEntry("model.onnx/x", 1, SHA))}, "listed as a file"),
        ({"target": Target(arch="sparc")}, "target arch 'sparc' unknown"),
        ({"target": Target(os="windows")}, "target os 'windows' unknown"),
        ({"runtime": Runtime("")}, "runtime.name is empty"),
        ({"format_version": 2}, "format version 2 is not supported"),
        (
            {"inputs": (TensorSpec("x", DataType.UINT8, (1,)), TensorSpec("x", DataType.UINT8, (1,)))},
            "unique",
        ),
    ],
)
def test_invalid_manifests(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PackageFormatError, match=message):
        sample(**changes)


def _raw(**changes: object) -> bytes:
    raw = sample().to_dict()
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (_raw(format_version=2, name=None), "format version 2 is not supported"),
        (_raw(format_version="1"), "'format_version' must be an integer"),
        (_raw(format_version=True), "'format_version' must be an integer"),
        (_raw(name=5), "'name' must be a string"),
        (_raw(files={}), "files a list"),
        (_raw(files=[{"path": "model.onnx", "size": "1", "sha256": SHA}]), "'files.size' must be an integer"),
        (_raw(files=["model.onnx"]), "files entries must be objects"),
        (_raw(inputs=[{"name": "x", "dtype": "COMPLEX64", "shape": [1]}]), "unknown data type"),
        (_raw(inputs=[{"name": "x", "dtype": "FLOAT32", "shape": [-2]}]), "integers >= -1"),
        (_raw(provenance=[]), "provenance must be an object"),
        (_raw(runtime="onnxruntime"), "runtime/target must be objects"),
    ],
)
def test_malformed_manifest_bytes(data: bytes, message: str) -> None:
    with pytest.raises(PackageFormatError, match=message) as info:
        Manifest.from_bytes(data)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_missing_field_is_named() -> None:
    raw = sample().to_dict()
    del raw["model_file"]
    with pytest.raises(PackageFormatError, match="missing the field 'model_file'"):
        Manifest.from_dict(raw)


def test_lone_surrogate_is_a_format_error_not_a_crash() -> None:
    data = sample().canonical_bytes().replace(b'"note":"', b'"note":"\\ud800', 1)
    manifest = Manifest.from_bytes(data)
    with pytest.raises(PackageFormatError, match="not valid Unicode"):
        manifest.canonical_bytes()


# ---------------------------------------------------------------------------------------------
# Property: canonical bytes round-trip for any valid manifest.

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_names = st.from_regex(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,20}", fullmatch=True)
_versions = st.text(alphabet="abcXYZ0189 _.", min_size=1, max_size=30)
_component = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,8}", fullmatch=True)
_paths = st.lists(_component, min_size=1, max_size=3).map("/".join)
_tensors = st.builds(
    TensorSpec,
    name=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=10),
    dtype=st.sampled_from(DataType),
    shape=st.lists(st.integers(min_value=-1, max_value=2**40), max_size=5).map(tuple),
)
_entries = st.builds(
    FileEntry,
    path=_paths,
    size=st.integers(min_value=0, max_value=2**50),
    sha256=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    files = draw(st.lists(_entries, min_size=1, max_size=5, unique_by=lambda e: e.path))
    inputs = draw(st.lists(_tensors, max_size=4, unique_by=lambda t: t.name))
    outputs = draw(st.lists(_tensors, max_size=4, unique_by=lambda t: t.name))
    try:
        return Manifest(
            name=draw(_names),
            version=draw(_versions),
            runtime=Runtime(draw(st.sampled_from(["onnxruntime", "litert", "null"])), draw(_text)),
            target=Target(
                draw(st.sampled_from(["linux", "any"])),
                draw(st.sampled_from(["x86_64", "aarch64", "armv7l", "any"])),
                draw(_text),
            ),
            model_file=draw(st.sampled_from([f.path for f in files])),
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            files=tuple(files),
            created=draw(_text),
            provenance=draw(st.dictionaries(_text, _text, max_size=4)),
        )
    except PackageFormatError:
        assume(False)  # e.g. a control-file path or a file inside another file
        raise


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_canonical_bytes_round_trip(manifest: Manifest) -> None:
    data = manifest.canonical_bytes()
    parsed = Manifest.from_bytes(data)
    assert parsed == manifest
    assert parsed.canonical_bytes() == data
