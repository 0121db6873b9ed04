"""Package build, safe unpacking, verification (the tamper matrix) and model metadata."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest_package import Member, make_onnx_classifier, make_tflite_add, read_tar_members, write_tar_gz

from edgefleet import __version__
from edgefleet.core import signing
from edgefleet.core.errors import (
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PackageFormatError,
    ResourceExhausted,
    SignatureError,
)
from edgefleet.core.manifest import Manifest, Runtime, Target
from edgefleet.core.package import (
    Limits,
    inspect_package,
    parse_manifest,
    unpack_package,
    verify_package,
    verify_package_dir,
)
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.packager.build import build_package
from edgefleet.packager.modelmeta import ORT_FOR_OPSET, ort_for_opset, read_model_metadata

CREATED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
CONTROL = ["manifest.json", "manifest.sig", "signer-chain.pem"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pkg")


@pytest.fixture(scope="module")
def keys(work: Path) -> signing.KeyPaths:
    return signing.init_keys(work / "keys")


@pytest.fixture(scope="module")
def other_keys(work: Path) -> signing.KeyPaths:
    return signing.init_keys(work / "other-keys")


@pytest.fixture(scope="module")
def model(work: Path) -> Path:
    return make_onnx_classifier(work / "clf.onnx")


@pytest.fixture(scope="module")
def archive(work: Path, keys: signing.KeyPaths, model: Path) -> Path:
    return build_package(
        model, name="clf", version="1.0", key_dir=keys.directory, out_dir=work / "out", created=CREATED
    )


def _members(archive: Path) -> list[Member]:
    return read_tar_members(archive)


def _rewrite(archive: Path, dest: Path, edit: Callable[[list[Member]], list[Member]]) -> Path:
    return write_tar_gz(dest, edit(_members(archive)))


def _manifest_of(members: list[Member]) -> Manifest:
    return Manifest.from_bytes(next(m.data for m in members if m.name == "manifest.json"))


def _assert_empty_or_absent(path: Path) -> None:
    assert not path.exists() or not any(path.iterdir())


# ---------------------------------------------------------------------------------------------
# Building


def test_build_layout_and_manifest(archive: Path, model: Path) -> None:
    assert archive.name == "clf-1.0.tar.gz"
    with tarfile.open(archive, "r:gz") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == [*CONTROL, "clf.onnx"]
    for info in infos:
        assert info.isreg()
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mode == 0o644
        assert info.mtime == int(CREATED.timestamp())
    manifest = _manifest_of(_members(archive))
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert manifest.name == "clf"
    assert manifest.version == "1.0"
    assert manifest.runtime == Runtime("onnxruntime", "1.17")
    assert manifest.target == Target("linux", "any", "none")
    assert manifest.model_file == "clf.onnx"
    assert manifest.inputs == (TensorSpec("x", DataType.FLOAT32, (-1, 4)),)
    assert manifest.outputs == (TensorSpec("probabilities", DataType.FLOAT32, (-1, 3)),)
    assert [(f.path, f.size, f.sha256) for f in manifest.files] == [
        ("clf.onnx", model.stat().st_size, digest)
    ]
    assert manifest.created == "2026-03-04T05:06:07Z"
    assert manifest.provenance == {
        "source_file": "clf.onnx",
        "source_sha256": digest,
        "edgefleet_version": __version__,
    }


def test_build_is_deterministic(work: Path, keys: signing.KeyPaths, model: Path, archive: Path) -> None:
    again = build_package(
        model, name="clf", version="1.0", key_dir=keys.directory, out_dir=work / "again", created=CREATED
    )
    assert again.read_bytes() == archive.read_bytes()
    assert not [p for p in (work / "again").iterdir() if p != again]  # no temp files left


def test_build_with_extras_target_provenance(
    work: Path, keys: signing.KeyPaths, model: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\ntwo\n")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\x00" * 10)
    pkg = build_package(
        model,
        name="clf-x",
        version="2.0 rc_1",
        key_dir=keys.directory,
        out_dir=tmp_path / "out",
        target=Target(arch="aarch64", accelerator="npu"),
        runtime="onnxruntime",
        extra_files=[labels, (weights, "lib/w.bin")],
        provenance={"source_sha256": "f" * 64, "git": "abc123"},
    )
    assert pkg.name == "clf-x-2.0_rc_1.tar.gz"
    manifest = verify_package(pkg, keys.trust_dir).manifest
    assert [f.path for f in manifest.files] == ["clf.onnx", "labels.txt", "lib/w.bin"]
    assert manifest.target == Target("linux", "aarch64", "npu")
    assert manifest.runtime == Runtime("onnxruntime", "1.17")
    assert manifest.provenance["source_sha256"] == "f" * 64
    assert manifest.provenance["git"] == "abc123"
    dest = unpack_package(pkg, tmp_path / "unpacked", trust_dir=keys.trust_dir)
    assert (dest / "lib" / "w.bin").read_bytes() == b"\x00" * 10
    assert verify_package_dir(dest, keys.trust_dir) == manifest


def test_build_any_file_with_explicit_description(keys: signing.KeyPaths, tmp_path: Path) -> None:
    blob = tmp_path / "model.json"
    blob.write_text("{}")
    spec = (TensorSpec("in", DataType.UINT8, (1, 3)),)
    pkg = build_package(
        blob,
        name="nullmodel",
        version="1",
        key_dir=keys.directory,
        out_dir=tmp_path,
        runtime="null",
        inputs=spec,
        outputs=spec,
    )
    manifest = verify_package(pkg, keys.trust_dir).manifest
    assert manifest.runtime == Runtime("null", "0")
    assert manifest.inputs == spec


def test_build_with_another_runtime_keeps_model_tensors(
    keys: signing.KeyPaths, model: Path, tmp_path: Path
) -> None:
    pkg = build_package(model, name="m", version="1", key_dir=keys.directory, out_dir=tmp_path, runtime="tvm")
    manifest = inspect_package(pkg).manifest
    assert manifest.runtime == Runtime("tvm", "0")
    assert manifest.inputs[0].shape == (-1, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "bad name"}, PackageFormatError, "model name 'bad name' is invalid"),
        ({"version": "1/2"}, PackageFormatError, "model version '1/2' is invalid"),
        ({"target": Target(arch="mips")}, PackageFormatError, "target arch 'mips' unknown"),
        ({"extra_files": ["/nonexistent/file"]}, NotFound, "extra file /nonexistent/file not found"),
        ({"extra_files": [("MODEL", "clf.onnx")]}, InvalidArgument, "two files would be stored as clf.onnx"),
        ({"extra_files": [("MODEL", "../up")]}, InvalidArgument, "cannot be stored as '../up'"),
        (
            {"extra_files": [("MODEL", "manifest.json")]},
            InvalidArgument,
            "collides with a package control file",
        ),
    ],
)
def test_build_refusals(
    keys: signing.KeyPaths,
    model: Path,
    tmp_path: Path,
    kwargs: dict[str, object],
    error: type[EdgefleetError],
    message: str,
) -> None:
    args: dict[str, object] = {"name": "clf", "version": "1"}
    args.update(kwargs)
    if "extra_files" in args:
        args["extra_files"] = [
            (model, e[1]) if isinstance(e, tuple) and e[0] == "MODEL" else e
            for e in args["extra_files"]  # type: ignore[attr-defined]
        ]
    with pytest.raises(error, match=message):
        build_package(model, key_dir=keys.directory, out_dir=tmp_path / "out", **args)  # type: ignore[arg-type]
    _assert_empty_or_absent(tmp_path / "out")


def test_build_missing_model_or_keys(keys: signing.KeyPaths, model: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"model file .*nope.onnx not found"):
        build_package(tmp_path / "nope.onnx", name="m", version="1", key_dir=keys.directory, out_dir=tmp_path)
    with pytest.raises(NotFound, match=r"signer.key not found \(create keys with: edgefleet keys init"):
        build_package(model, name="m", version="1", key_dir=tmp_path / "nokeys", out_dir=tmp_path)


def test_build_unknown_model_kind(keys: signing.KeyPaths, tmp_path: Path) -> None:
    blob = tmp_path / "model.pt"
    blob.write_bytes(b"x")
    with pytest.raises(
        InvalidArgument, match=r"supported kinds are \.onnx \(onnxruntime\), \.tflite \(litert\)"
    ):
        build_package(blob, name="m", version="1", key_dir=keys.directory, out_dir=tmp_path / "out")
    _assert_empty_or_absent(tmp_path / "out")


def test_build_tflite(keys: signing.KeyPaths, tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed")
    model = make_tflite_add(tmp_path / "add.tflite")
    pkg = build_package(model, name="add", version="1", key_dir=keys.directory, out_dir=tmp_path)
    manifest = verify_package(pkg, keys.trust_dir).manifest
    assert manifest.runtime.name == "litert"
    assert [(t.name, t.dtype, t.shape) for t in manifest.inputs] == [
        ("a", DataType.FLOAT32, (-1, 4)),
        ("b", DataType.FLOAT32, (-1, 4)),
    ]
    assert [t.name for t in manifest.outputs] == ["sum"]


# ---------------------------------------------------------------------------------------------
# Unpacking and verifying the good package


def test_unpack_and_verify(archive: Path, keys: signing.KeyPaths, model: Path, tmp_path: Path) -> None:
    dest = unpack_package(archive, tmp_path / "a" / "b", trust_dir=keys.trust_dir)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*CONTROL, "clf.onnx"])
    assert (dest / "clf.onnx").read_bytes() == model.read_bytes()
    manifest = verify_package_dir(dest, keys.trust_dir)
    assert manifest.name == "clf"
    verified = verify_package(dest, keys.trust_dir)
    assert verified.signer.subject == "CN=edgefleet package signer"
    assert verify_package(archive, keys.trust_dir).manifest == manifest


def test_unpack_without_trust_dir_still_checks_digests(archive: Path, tmp_path: Path) -> None:
    dest = unpack_package(archive, tmp_path / "d")
    assert (dest / "manifest.json").is_file()


def test_unpack_into_existing_empty_dir(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    assert unpack_package(archive, dest) == dest


def test_unpack_into_non_empty_dir_is_refused(archive: Path, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FailedPrecondition, match=r"is not empty"):
        unpack_package(archive, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_unpack_onto_a_file_is_refused(archive: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FailedPrecondition, match=r"is not a directory"):
        unpack_package(archive, tmp_path / "f")


def test_archive_member_order_does_not_matter(archive: Path, keys: signing.KeyPaths, tmp_path: Path) -> None:
    reordered = _rewrite(archive, tmp_path / "r.tar.gz", lambda ms: list(reversed(ms)))
    dest = unpack_package(reordered, tmp_path / "d", trust_dir=keys.trust_dir)
    verify_package_dir(dest, keys.trust_dir)


def test_missing_package(tmp_path: Path, keys: signing.KeyPaths) -> None:
    with pytest.raises(NotFound, match=r"not found"):
        unpack_package(tmp_path / "none.tar.gz", tmp_path / "d")
    with pytest.raises(NotFound, match=r"not found"):
        verify_package_dir(tmp_path / "none", keys.trust_dir)
    with pytest.raises(NotFound, match=r"not found"):
        verify_package(tmp_path / "none.tar.gz", keys.trust_dir)
    _assert_empty_or_absent(tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# Tamper matrix: unpacked directories


@pytest.fixture
def unpacked(archive: Path, tmp_path: Path) -> Path:
    return unpack_package(archive, tmp_path / "pkg")


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _resign(directory: Path, key_dir: Path, manifest_bytes: bytes | None = None) -> None:
    signer = signing.load_signer(key_dir)
    data = manifest_bytes if manifest_bytes is not None else (directory / "manifest.json").read_bytes()
    (directory / "manifest.json").write_bytes(data)
    (directory / "manifest.sig").write_bytes(signing.sign(data, signer))
    (directory / "signer-chain.pem").write_bytes(signer.chain_pem)


def _edited_manifest(directory: Path, **changes: object) -> bytes:
    raw = json.loads((directory / "manifest.json").read_bytes())
    raw.update(changes)
    return Manifest.from_dict(raw).canonical_bytes()


def _tamper_artifact(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    _flip_last_byte(d / "clf.onnx")


def _truncate_artifact(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / "clf.onnx").write_bytes((d / "clf.onnx").read_bytes()[:-1])


def _change_manifest(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / "manifest.json").write_bytes(_edited_manifest(d, version="9.9"))


def _change_signature(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    _flip_last_byte(d / "manifest.sig")


def _wrong_signer(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    _resign(d, o.directory)


def _signature_by_wrong_key(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    data = (d / "manifest.json").read_bytes()
    (d / "manifest.sig").write_bytes(signing.sign(data, signing.load_signer(o.directory)))


def _extra_file(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / "extra.bin").write_bytes(b"x")


def _extra_hidden_file(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / ".hidden").write_bytes(b"x")


def _extra_directory(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / "sub").mkdir()


def _missing_file(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / "clf.onnx").unlink()


def _missing_signature(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / "manifest.sig").unlink()


def _missing_chain(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / "signer-chain.pem").unlink()


def _missing_manifest(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    (d / "manifest.json").unlink()


def _symlinked_model(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    real = d.parent / "elsewhere.onnx"
    real.write_bytes((d / "clf.onnx").read_bytes())
    (d / "clf.onnx").unlink()
    (d / "clf.onnx").symlink_to(real)


def _symlinked_manifest(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    real = d.parent / "m.json"
    real.write_bytes((d / "manifest.json").read_bytes())
    (d / "manifest.json").unlink()
    (d / "manifest.json").symlink_to(real)


def _hardlinked_model(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    os.link(d / "clf.onnx", d.parent / "alias.onnx")


def _fifo(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    os.mkfifo(d / "pipe")


def _non_canonical_manifest(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    raw = json.loads((d / "manifest.json").read_bytes())
    _resign(d, k.directory, json.dumps(raw, indent=2).encode())


def _unknown_field(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    raw = json.loads((d / "manifest.json").read_bytes())
    raw["surprise"] = True
    _resign(d, k.directory, json.dumps(raw, sort_keys=True, separators=(",", ":")).encode())


def _resigned_size_lie(d: Path, k: signing.KeyPaths, o: signing.KeyPaths) -> None:
    raw = json.loads((d / "manifest.json").read_bytes())
    raw["files"][0]["size"] += 1
    _resign(d, k.directory, Manifest.from_dict(raw).canonical_bytes())


DIRECTORY_TAMPERS = [
    (_tamper_artifact, SignatureError, r"file 'clf.onnx' was modified: its SHA-256 is"),
    (_truncate_artifact, SignatureError, r"file 'clf.onnx' is \d+ bytes; the signed manifest says"),
    (_change_manifest, SignatureError, "bad signature"),
    (_change_signature, SignatureError, "bad signature"),
    (_wrong_signer, SignatureError, "untrusted signer"),
    (_signature_by_wrong_key, SignatureError, "bad signature"),
    (_extra_file, SignatureError, r"not listed in the signed manifest: 'extra.bin'"),
    (_extra_hidden_file, SignatureError, r"not listed in the signed manifest: '.hidden'"),
    (_extra_directory, SignatureError, r"director\(ies\) not used by the signed manifest: 'sub'"),
    (_missing_file, SignatureError, r"listed in the manifest are missing: 'clf.onnx'"),
    (_missing_signature, SignatureError, "is not signed: manifest.sig is missing"),
    (_missing_chain, SignatureError, "is not signed: signer-chain.pem is missing"),
    (_missing_manifest, PackageFormatError, "has no manifest.json"),
    (_symlinked_model, PackageFormatError, "'clf.onnx' is a symbolic link"),
    (_symlinked_manifest, PackageFormatError, "'manifest.json' is a symbolic link"),
    (_hardlinked_model, PackageFormatError, r"'clf.onnx' is a hard link \(2 names\)"),
    (_fifo, PackageFormatError, "'pipe' is a device, FIFO or socket"),
    (_non_canonical_manifest, PackageFormatError, "not in canonical form"),
    (_unknown_field, PackageFormatError, "not in canonical form"),
    (_resigned_size_lie, SignatureError, r"file 'clf.onnx' is \d+ bytes; the signed manifest says"),
]


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    DIRECTORY_TAMPERS,
    ids=[t[0].__name__.strip("_") for t in DIRECTORY_TAMPERS],
)
def test_directory_tamper_matrix(
    unpacked: Path,
    keys: signing.KeyPaths,
    other_keys: signing.KeyPaths,
    tamper: Callable[[Path, signing.KeyPaths, signing.KeyPaths], None],
    error: type[EdgefleetError],
    message: str,
) -> None:
    verify_package_dir(unpacked, keys.trust_dir)
    tamper(unpacked, keys, other_keys)
    with pytest.raises(error, match=message) as info:
        verify_package_dir(unpacked, keys.trust_dir)
    expected = Code.FAILED_PRECONDITION if error is SignatureError else Code.INVALID_ARGUMENT
    assert info.value.code is expected


def test_expired_and_not_yet_valid_signer(unpacked: Path, keys: signing.KeyPaths) -> None:
    cert = signing.load_signer(keys.directory).certificate
    with pytest.raises(SignatureError, match=r"signer certificate .* expired at"):
        verify_package_dir(unpacked, keys.trust_dir, now=cert.not_valid_after_utc + timedelta(days=1))
    with pytest.raises(SignatureError, match=r"signer certificate .* is not valid yet"):
        verify_package_dir(unpacked, keys.trust_dir, now=cert.not_valid_before_utc - timedelta(days=1))


def test_untrusted_root(unpacked: Path, archive: Path, other_keys: signing.KeyPaths, tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match=r"untrusted signer"):
        verify_package_dir(unpacked, other_keys.trust_dir)
    with pytest.raises(SignatureError, match=r"untrusted signer"):
        unpack_package(archive, tmp_path / "d", trust_dir=other_keys.trust_dir)
    _assert_empty_or_absent(tmp_path / "d")


def test_not_a_directory(archive: Path, keys: signing.KeyPaths) -> None:
    with pytest.raises(PackageFormatError, match=r"is not a package directory"):
        verify_package_dir(archive, keys.trust_dir)


def test_directory_file_count_limit(unpacked: Path, keys: signing.KeyPaths) -> None:
    for i in range(5):
        (unpacked / f"f{i}").write_bytes(b"")
    with pytest.raises(PackageFormatError, match=r"holds more than 2 files"):
        verify_package_dir(unpacked, keys.trust_dir, limits=Limits(max_files=2))


def test_directory_size_limit(unpacked: Path, keys: signing.KeyPaths) -> None:
    with pytest.raises(ResourceExhausted, match=r"declares \d+ bytes of artifacts \(at most 10\)"):
        verify_package_dir(unpacked, keys.trust_dir, limits=Limits(max_total_bytes=10))


# ---------------------------------------------------------------------------------------------
# Tamper matrix: archives (crafted with tarfile)


def _replace(name: str, data: bytes) -> Callable[[list[Member]], list[Member]]:
    return lambda ms: [Member(m.name, data) if m.name == name else m for m in ms]


def _flip(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _model_data(archive: Path) -> bytes:
    return next(m.data for m in _members(archive) if m.name == "clf.onnx")


ARCHIVE_TAMPERS: list[tuple[str, Callable[[Path], Callable[[list[Member]], list[Member]]], type, str]] = [
    (
        "changed-artifact",
        lambda a: _replace("clf.onnx", _flip(_model_data(a))),
        SignatureError,
        "file 'clf.onnx' was modified",
    ),
    (
        "truncated-artifact",
        lambda a: _replace("clf.onnx", _model_data(a)[:-1]),
        SignatureError,
        r"'clf.onnx' is \d+ bytes; the signed manifest says",
    ),
    (
        "changed-manifest",
        lambda a: _replace(
            "manifest.json",
            next(m.data for m in _members(a) if m.name == "manifest.json").replace(b'"1.0"', b'"1.1"'),
        ),
        SignatureError,
        "bad signature",
    ),
    (
        "extra-file",
        lambda a: lambda ms: [*ms, Member("extra.bin", b"x")],
        SignatureError,
        "'extra.bin' is not listed",
    ),
    (
        "extra-file-first",
        lambda a: lambda ms: [Member("evil.so", b"x"), *ms],
        SignatureError,
        "'evil.so' is not listed",
    ),
    (
        "missing-file",
        lambda a: lambda ms: [m for m in ms if m.name != "clf.onnx"],
        SignatureError,
        "missing: 'clf.onnx'",
    ),
    (
        "missing-signature",
        lambda a: lambda ms: [m for m in ms if m.name != "manifest.sig"],
        SignatureError,
        "is not signed: manifest.sig is missing",
    ),
    (
        "missing-manifest",
        lambda a: lambda ms: [m for m in ms if m.name != "manifest.json"],
        PackageFormatError,
        "has no manifest.json",
    ),
    (
        "dotdot",
        lambda a: lambda ms: [*ms, Member("../evil", b"x")],
        PackageFormatError,
        "'../evil' has an unsafe path",
    ),
    (
        "dotdot-nested",
        lambda a: lambda ms: [Member("lib/../../evil", b"x"), *ms],
        PackageFormatError,
        "unsafe path",
    ),
    (
        "absolute",
        lambda a: lambda ms: [Member("/tmp/edgefleet-evil", b"x"), *ms],
        PackageFormatError,
        "'/tmp/edgefleet-evil' has an unsafe path",
    ),
    ("dot-prefix", lambda a: lambda ms: [Member("./x", b"x"), *ms], PackageFormatError, "unsafe path"),
    (
        "symlink",
        lambda a: lambda ms: [*ms, Member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
        PackageFormatError,
        "'link' is a symbolic link",
    ),
    (
        "symlink-replacing-model",
        lambda a: lambda ms: [
            Member("clf.onnx", type=tarfile.SYMTYPE, linkname="/etc/passwd") if m.name == "clf.onnx" else m
            for m in ms
        ],
        PackageFormatError,
        "'clf.onnx' is a symbolic link",
    ),
    (
        "hardlink",
        lambda a: lambda ms: [*ms, Member("hard", type=tarfile.LNKTYPE, linkname="clf.onnx")],
        PackageFormatError,
        "'hard' is a hard link",
    ),
    (
        "char-device",
        lambda a: lambda ms: [*ms, Member("null", type=tarfile.CHRTYPE)],
        PackageFormatError,
        "'null' is a character device",
    ),
    (
        "block-device",
        lambda a: lambda ms: [*ms, Member("sda", type=tarfile.BLKTYPE)],
        PackageFormatError,
        "'sda' is a block device",
    ),
    (
        "fifo",
        lambda a: lambda ms: [*ms, Member("pipe", type=tarfile.FIFOTYPE)],
        PackageFormatError,
        "is a FIFO",
    ),
    (
        "duplicate",
        lambda a: lambda ms: [*ms, Member("clf.onnx", _model_data(a))],
        PackageFormatError,
        "'clf.onnx' appears twice",
    ),
    (
        "duplicate-manifest",
        lambda a: lambda ms: [*ms, next(m for m in ms if m.name == "manifest.json")],
        PackageFormatError,
        "'manifest.json' appears twice",
    ),
    (
        "stray-directory",
        lambda a: lambda ms: [Member("sub", type=tarfile.DIRTYPE), *ms],
        SignatureError,
        r"director\(ies\) not used",
    ),
    (
        "directory-traversal",
        lambda a: lambda ms: [Member("..", type=tarfile.DIRTYPE), *ms],
        PackageFormatError,
        "unsafe path",
    ),
    (
        "file-inside-file",
        lambda a: lambda ms: [*ms, Member("clf.onnx/x", b"x")],
        PackageFormatError,
        "is inside 'clf.onnx', which is a file",
    ),
    (
        "oversized-manifest",
        lambda a: _replace("manifest.json", b" " * (4 * 1024 * 1024 + 1)),
        PackageFormatError,
        "manifest.json is 4194305 bytes; at most 4194304",
    ),
]


@pytest.mark.parametrize(
    ("name", "edit", "error", "message"), ARCHIVE_TAMPERS, ids=[t[0] for t in ARCHIVE_TAMPERS]
)
@pytest.mark.parametrize("with_trust", [True, False], ids=["trusted", "untrusted-unpack"])
def test_archive_tamper_matrix(
    archive: Path,
    keys: signing.KeyPaths,
    tmp_path: Path,
    name: str,
    edit: Callable[[Path], Callable[[list[Member]], list[Member]]],
    error: type[EdgefleetError],
    message: str,
    with_trust: bool,
) -> None:
    if not with_trust and "manifest" in name and error is SignatureError:
        pytest.skip("without a trust directory the signature is not checked")
    bad = _rewrite(archive, tmp_path / "bad.tar.gz", edit(archive))
    dest = tmp_path / "data" / "dest"
    trust = keys.trust_dir if with_trust else None
    with pytest.raises(error, match=message):
        unpack_package(bad, dest, trust_dir=trust)
    assert not (tmp_path / "data").exists()  # nothing half-done, not even the parents it created
    assert not Path("/tmp/edgefleet-evil").exists()
    assert not (tmp_path / "evil").exists()
    if with_trust:
        with pytest.raises(error, match=message):
            verify_package(bad, keys.trust_dir)


def test_tampered_archive_leaves_an_existing_destination_empty(
    archive: Path, keys: signing.KeyPaths, tmp_path: Path
) -> None:
    bad = _rewrite(archive, tmp_path / "bad.tar.gz", _replace("clf.onnx", _flip(_model_data(archive))))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SignatureError, match=r"was modified"):
        unpack_package(bad, dest, trust_dir=keys.trust_dir)
    assert dest.is_dir()
    assert list(dest.iterdir()) == []


def test_archive_signed_by_wrong_signer(
    archive: Path, keys: signing.KeyPaths, other_keys: signing.KeyPaths, tmp_path: Path
) -> None:
    signer = signing.load_signer(other_keys.directory)
    members = _members(archive)
    manifest = next(m.data for m in members if m.name == "manifest.json")
    resigned = _replace("manifest.sig", signing.sign(manifest, signer))(members)
    resigned = _replace("signer-chain.pem", signer.chain_pem)(resigned)
    bad = write_tar_gz(tmp_path / "bad.tar.gz", resigned)
    with pytest.raises(SignatureError, match=r"untrusted signer"):
        unpack_package(bad, tmp_path / "d", trust_dir=keys.trust_dir)
    # only the signature swapped: the chain's key does not verify it
    swapped = write_tar_gz(
        tmp_path / "swapped.tar.gz", _replace("manifest.sig", signing.sign(manifest, signer))(members)
    )
    with pytest.raises(SignatureError, match=r"bad signature"):
        verify_package(swapped, keys.trust_dir)


def test_archive_with_expired_signer(archive: Path, keys: signing.KeyPaths, tmp_path: Path) -> None:
    later = signing.load_signer(keys.directory).certificate.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(SignatureError, match=r"expired at"):
        unpack_package(archive, tmp_path / "d", trust_dir=keys.trust_dir, now=later)
    _assert_empty_or_absent(tmp_path / "d")


def test_archive_with_needed_directory_entries(archive: Path, keys: signing.KeyPaths, tmp_path: Path) -> None:
    # tar tools emit directory entries for sub-folders; they are fine when the manifest needs them
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    pkg = build_package(
        _model_path(archive, tmp_path),
        name="nested",
        version="1",
        key_dir=keys.directory,
        out_dir=tmp_path / "out",
        extra_files=[(weights, "lib/w.bin")],
    )
    with_dir = _rewrite(
        pkg, tmp_path / "with-dir.tar.gz", lambda ms: [Member("lib", type=tarfile.DIRTYPE), *ms]
    )
    dest = unpack_package(with_dir, tmp_path / "d", trust_dir=keys.trust_dir)
    assert (dest / "lib" / "w.bin").read_bytes() == b"w"


def _model_path(archive: Path, tmp_path: Path) -> Path:
    path = tmp_path / "clf.onnx"
    path.write_bytes(_model_data(archive))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a gzip-compressed tar archive"),
        (b"PK\x03\x04 zip file", "not a gzip-compressed tar archive"),
        (gzip.compress(b"not a tar file at all" * 40), "not a readable .tar.gz package"),
    ],
)
def test_not_an_archive(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(content)
    with pytest.raises(PackageFormatError, match=message):
        unpack_package(bad, tmp_path / "d")
    _assert_empty_or_absent(tmp_path / "d")


def test_truncated_archive(archive: Path, tmp_path: Path) -> None:
    data = archive.read_bytes()
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageFormatError, match=r"not a readable .tar.gz package"):
        unpack_package(bad, tmp_path / "d")
    _assert_empty_or_absent(tmp_path / "d")


def test_archive_size_limit(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ResourceExhausted, match=r"declares \d+ bytes of artifacts \(at most 100\)"):
        unpack_package(archive, tmp_path / "d", limits=Limits(max_total_bytes=100))
    # an extra member arriving before the manifest is counted too
    big = _rewrite(archive, tmp_path / "big.tar.gz", lambda ms: [Member("big.bin", b"\0" * 5000), *ms])
    with pytest.raises(ResourceExhausted, match=r"holds more than 1000 bytes of artifacts"):
        unpack_package(big, tmp_path / "d", limits=Limits(max_total_bytes=1000))
    _assert_empty_or_absent(tmp_path / "d")


def test_archive_member_count_limit(archive: Path, tmp_path: Path) -> None:
    many = _rewrite(
        archive, tmp_path / "many.tar.gz", lambda ms: [*(Member(f"f{i}", b"") for i in range(5)), *ms]
    )
    with pytest.raises(PackageFormatError, match=r"more than 3 members"):
        unpack_package(many, tmp_path / "d", limits=Limits(max_files=3))


def test_huge_pax_header_is_refused(tmp_path: Path) -> None:
    # tarfile would hold a pax extended header in memory: the reader bounds it
    bad = tmp_path / "pax.tar.gz"
    with tarfile.open(bad, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"comment": "A" * (2 * 1024 * 1024)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(PackageFormatError, match=r"a tar header is larger than"):
        unpack_package(bad, tmp_path / "d")
    _assert_empty_or_absent(tmp_path / "d")


def test_directory_size_field_does_not_widen_the_header_budget(tmp_path: Path) -> None:
    bad = tmp_path / "dirsize.tar.gz"
    with tarfile.open(bad, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("lib")
        folder.type = tarfile.DIRTYPE
        folder.size = 64 * 1024 * 1024  # no data follows a directory header
        tar.addfile(folder)
        info = tarfile.TarInfo("lib/x")
        info.pax_headers = {"comment": "A" * (2 * 1024 * 1024)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(PackageFormatError, match="a tar header is larger than"):
        unpack_package(bad, tmp_path / "d")
    _assert_empty_or_absent(tmp_path / "d")


# ---------------------------------------------------------------------------------------------
# Inspect


def test_inspect_archive_and_directory(archive: Path, unpacked: Path, keys: signing.KeyPaths) -> None:
    info = inspect_package(archive)
    assert info.manifest.name == "clf"
    assert info.signer.subject == "CN=edgefleet package signer"
    assert info.signer.issuer == "CN=edgefleet root CA"
    cert = signing.load_signer(keys.directory).certificate
    assert info.signer.not_after == cert.not_valid_after_utc
    assert info.signature_size == 64
    as_dict = json.loads(json.dumps(info.to_dict()))
    assert as_dict["verified"] is False
    assert as_dict["manifest"]["name"] == "clf"
    assert inspect_package(unpacked).manifest == info.manifest


def test_inspect_does_not_need_trust_but_reports_bad_format(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_bytes(b"{}")
    (tmp_path / "manifest.sig").write_bytes(b"")
    (tmp_path / "signer-chain.pem").write_bytes(b"")
    with pytest.raises(PackageFormatError, match=r"missing the field"):
        inspect_package(tmp_path)


def test_parse_manifest_requires_canonical_bytes(archive: Path) -> None:
    data = next(m.data for m in _members(archive) if m.name == "manifest.json")
    assert parse_manifest(data).name == "clf"
    with pytest.raises(PackageFormatError, match=r"not in canonical form"):
        parse_manifest(data + b"\n")


# ---------------------------------------------------------------------------------------------
# Model metadata


def test_onnx_metadata(work: Path) -> None:
    meta = read_model_metadata(make_onnx_classifier(work / "m8.onnx", features=8, classes=5))
    assert meta.runtime == "onnxruntime"
    assert meta.runtime_min_version == "1.17"
    assert meta.inputs == (TensorSpec("x", DataType.FLOAT32, (-1, 8)),)
    assert meta.outputs == (TensorSpec("probabilities", DataType.FLOAT32, (-1, 5)),)


def test_onnx_new_opset_needs_newer_runtime(work: Path) -> None:
    assert (
        read_model_metadata(make_onnx_classifier(work / "o21.onnx", opset=21)).runtime_min_version == "1.18"
    )


def test_the_opset_table_is_onnx_runtimes_compatibility_table() -> None:
    """One table for the packager and the compiler, as ONNX Runtime's docs give it."""
    assert ORT_FOR_OPSET == {
        13: "1.6",
        14: "1.8",
        15: "1.9",
        16: "1.11",
        17: "1.12",
        18: "1.14",
        19: "1.15",
        20: "1.17",
        21: "1.18",
        22: "1.21",
        23: "1.23",
    }
    assert ort_for_opset(7) == "1.6"
    assert ort_for_opset(17) == "1.12"
    assert ort_for_opset(max(ORT_FOR_OPSET) + 1) is None


def test_onnx_metadata_never_asks_for_less_than_edgefleets_onnx_runtime(work: Path) -> None:
    for opset, expected in ((13, "1.17"), (20, "1.17"), (22, "1.21")):
        model = make_onnx_classifier(work / f"floor{opset}.onnx", opset=opset)
        assert read_model_metadata(model).runtime_min_version == expected


def test_onnx_metadata_without_the_onnx_package(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_onnx_classifier(work / "ort.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # the device install has no onnx package
    meta = read_model_metadata(path)
    assert meta.runtime == "onnxruntime"
    assert meta.inputs == (TensorSpec("x", DataType.FLOAT32, (-1, 4)),)
    assert meta.outputs == (TensorSpec("probabilities", DataType.FLOAT32, (-1, 3)),)
    bad = work / "bad-ort.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(InvalidArgument, match=r"not an ONNX model ONNX Runtime can read"):
        read_model_metadata(bad)


def test_onnx_unsupported_tensor_type(work: Path) -> None:
    from onnx import TensorProto

    path = make_onnx_classifier(work / "bool.onnx", input_elem_type=TensorProto.BOOL)
    with pytest.raises(InvalidArgument, match=r"input 'x' of bool.onnx has element type BOOL") as info:
        read_model_metadata(path)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_onnx_sequence_output_names_zipmap(work: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [1])],
    )
    path = work / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(
        InvalidArgument, match=r"output 'seq' of seq.onnx is a sequence_type, not a tensor.*zipmap"
    ):
        read_model_metadata(path)


@pytest.mark.parametrize(
    ("filename", "content", "error", "message"),
    [
        (
            "model.pb",
            b"x",
            InvalidArgument,
            r"supported kinds are \.onnx \(onnxruntime\), \.tflite \(litert\)",
        ),
        ("missing.onnx", None, NotFound, "model file .* not found"),
        ("garbage.onnx", b"\xff" * 64, InvalidArgument, "garbage.onnx is not"),
    ],
)
def test_metadata_errors(
    tmp_path: Path, filename: str, content: bytes | None, error: type[EdgefleetError], message: str
) -> None:
    path = tmp_path / filename
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message):
        read_model_metadata(path)


def test_tflite_metadata(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed")
    meta = read_model_metadata(make_tflite_add(tmp_path / "add.tflite"))
    assert meta.runtime == "litert"
    assert meta.outputs == (TensorSpec("sum", DataType.FLOAT32, (-1, 4)),)


def test_tflite_unsupported_type(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed")
    path = make_tflite_add(tmp_path / "int8.tflite", tensor_type="INT8")
    with pytest.raises(InvalidArgument, match=r"input 'a' of int8.tflite has type int8"):
        read_model_metadata(path)


def test_tflite_garbage(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert", reason="the litert extra is not installed")
    path = tmp_path / "junk.tflite"
    path.write_bytes(b"junk" * 10)
    with pytest.raises(InvalidArgument, match=r"junk.tflite is not a TFLite model LiteRT can read"):
        read_model_metadata(path)


def test_tflite_without_litert_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "add.tflite"
    path.write_bytes(b"TFL3")
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(FailedPrecondition, match=r"pip install 'edgefleet\[litert\]'"):
        read_model_metadata(path)


def test_unpacked_files_are_plain_and_readable(unpacked: Path) -> None:
    for path in unpacked.iterdir():
        mode = path.lstat().st_mode
        assert stat.S_ISREG(mode)
        assert not mode & 0o022
