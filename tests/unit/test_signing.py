"""Signing keys, signatures and certificate-chain verification (real keys, real X.509)."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.core import signing
from edgefleet.core.errors import (
    AlreadyExists,
    Code,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SignatureError,
)

DATA = b'{"name":"m","version":"1"}'
NOW = datetime.now(UTC)


@pytest.fixture(scope="module", params=["ed25519", "ecdsa-p256"])
def keys(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> signing.KeyPaths:
    return signing.init_keys(tmp_path_factory.mktemp("keys"), algorithm=request.param)


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> signing.KeyPaths:
    return signing.init_keys(tmp_path_factory.mktemp("other"))


# ---------------------------------------------------------------------------------------------
# init_keys / load_signer


def test_init_keys_layout_and_modes(tmp_path: Path) -> None:
    paths = signing.init_keys(tmp_path / "k", common_name="acme")
    assert paths.trust_dir == tmp_path / "k" / "trust"
    assert sorted(p.name for p in paths.trust_dir.iterdir()) == ["root-ca.pem"]
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "root-ca.key",
        "signer.key",
        "signer.pem",
        "trust",
    ]
    for key in (paths.root_key, paths.signer_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    root = x509.load_pem_x509_certificate(paths.root_cert.read_bytes())
    signer = x509.load_pem_x509_certificate(paths.signer_cert.read_bytes())
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme root CA"
    assert signer.issuer == root.subject
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not signer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert signer.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    signer.verify_directly_issued_by(root)
    signing.check_trust_dir(paths.trust_dir)


def test_init_keys_refuses_to_overwrite(tmp_path: Path) -> None:
    first = signing.init_keys(tmp_path)
    before = first.signer_key.read_bytes()
    with pytest.raises(AlreadyExists, match=r"refusing to overwrite") as info:
        signing.init_keys(tmp_path)
    assert info.value.code is Code.ALREADY_EXISTS
    assert first.signer_key.read_bytes() == before
    signing.init_keys(tmp_path, force=True)
    assert first.signer_key.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root-ca.key", "signer.key", "signer.pem", "trust"]


def test_init_keys_rejects_unknown_algorithm(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown key algorithm 'rsa'.*ed25519, ecdsa-p256"):
        signing.init_keys(tmp_path, algorithm="rsa")  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_load_signer(keys: signing.KeyPaths) -> None:
    signer = signing.load_signer(keys.directory)
    assert signer.chain_pem == keys.signer_cert.read_bytes()
    expected = "ed25519" if isinstance(signer.private_key, ed25519.Ed25519PrivateKey) else "ecdsa-p256"
    assert signer.algorithm == expected


def test_load_signer_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"signer.key not found"):
        signing.load_signer(tmp_path)


def test_load_signer_key_must_match_certificate(tmp_path: Path, other_keys: signing.KeyPaths) -> None:
    paths = signing.init_keys(tmp_path)
    paths.signer_cert.write_bytes(other_keys.signer_cert.read_bytes())
    with pytest.raises(FailedPrecondition, match=r"does not match the certificate"):
        signing.load_signer(tmp_path)


def test_load_signer_refuses_expired_certificate(other_keys: signing.KeyPaths) -> None:
    with pytest.raises(FailedPrecondition, match=r"signer certificate .* expired"):
        signing.load_signer(other_keys.directory, now=NOW + timedelta(days=5000))


# ---------------------------------------------------------------------------------------------
# sign / verify_signature with init_keys keys


def test_sign_and_verify(keys: signing.KeyPaths) -> None:
    signer = signing.load_signer(keys.directory)
    signature = signing.sign(DATA, signer)
    info = signing.verify_signature(DATA, signature, signer.chain_pem, keys.trust_dir)
    assert info.subject == "CN=edgefleet package signer"
    assert info.issuer == "CN=edgefleet root CA"
    assert info.key_algorithm == signer.algorithm
    assert len(info.fingerprint_sha256) == 64


@pytest.mark.parametrize("mutate", [lambda d: d + b" ", lambda d: d.replace(b'"1"', b'"2"'), lambda d: b""])
def test_changed_data_fails(keys: signing.KeyPaths, mutate: object) -> None:
    signer = signing.load_signer(keys.directory)
    signature = signing.sign(DATA, signer)
    with pytest.raises(SignatureError, match=r"bad signature") as info:
        signing.verify_signature(mutate(DATA), signature, signer.chain_pem, keys.trust_dir)  # type: ignore[operator]
    assert info.value.code is Code.FAILED_PRECONDITION


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64, b"garbage", b"\x30\x06\x02\x01\x01\x02\x01\x01"])
def test_garbage_signature_fails(keys: signing.KeyPaths, signature: bytes) -> None:
    signer = signing.load_signer(keys.directory)
    with pytest.raises(SignatureError, match=r"bad signature"):
        signing.verify_signature(DATA, signature, signer.chain_pem, keys.trust_dir)


def test_signature_by_another_key_fails(keys: signing.KeyPaths, other_keys: signing.KeyPaths) -> None:
    mine = signing.load_signer(keys.directory)
    signature = signing.sign(DATA, signing.load_signer(other_keys.directory))
    with pytest.raises(SignatureError, match=r"bad signature"):
        signing.verify_signature(DATA, signature, mine.chain_pem, keys.trust_dir)


def test_untrusted_root(keys: signing.KeyPaths, other_keys: signing.KeyPaths) -> None:
    signer = signing.load_signer(other_keys.directory)
    signature = signing.sign(DATA, signer)
    with pytest.raises(SignatureError, match=r"untrusted signer.*another key"):
        signing.verify_signature(DATA, signature, signer.chain_pem, keys.trust_dir)


def test_untrusted_root_with_another_name(keys: signing.KeyPaths, tmp_path: Path) -> None:
    stranger = signing.init_keys(tmp_path, common_name="stranger")
    signer = signing.load_signer(stranger.directory)
    with pytest.raises(SignatureError, match=r"untrusted signer.*'CN=stranger root CA'.*neither"):
        signing.verify_signature(DATA, signing.sign(DATA, signer), signer.chain_pem, keys.trust_dir)


def test_expired_and_not_yet_valid(keys: signing.KeyPaths) -> None:
    signer = signing.load_signer(keys.directory)
    signature = signing.sign(DATA, signer)
    after = signer.certificate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(SignatureError, match=r"signer certificate .* expired at"):
        signing.verify_signature(DATA, signature, signer.chain_pem, keys.trust_dir, now=after)
    before = signer.certificate.not_valid_before_utc - timedelta(seconds=1)
    with pytest.raises(
        SignatureError, match=r"signer certificate .* is not valid yet.*check the device clock"
    ):
        signing.verify_signature(DATA, signature, signer.chain_pem, keys.trust_dir, now=before)
    # the boundaries themselves are valid
    signing.verify_signature(
        DATA, signature, signer.chain_pem, keys.trust_dir, now=signer.certificate.not_valid_after_utc
    )


def test_naive_now_is_refused(keys: signing.KeyPaths) -> None:
    signer = signing.load_signer(keys.directory)
    with pytest.raises(InvalidArgument, match=r"timezone-aware"):
        signing.verify_signature(DATA, b"", signer.chain_pem, keys.trust_dir, now=datetime(2030, 1, 1))


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        (b"", "holds no certificate"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "not valid PEM"),
        (b"x" * (signing.MAX_CHAIN_BYTES + 1), "larger than"),
    ],
)
def test_bad_chain(keys: signing.KeyPaths, chain: bytes, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        signing.verify_signature(DATA, b"sig", chain, keys.trust_dir)


def test_trust_dir_problems(keys: signing.KeyPaths, tmp_path: Path) -> None:
    signer = signing.load_signer(keys.directory)
    signature = signing.sign(DATA, signer)
    with pytest.raises(FailedPrecondition, match=r"does not exist"):
        signing.verify_signature(DATA, signature, signer.chain_pem, tmp_path / "missing")
    (tmp_path / "README").write_text("not a certificate")
    with pytest.raises(FailedPrecondition, match=r"holds no certificates \(\*.pem, \*.crt files\)"):
        signing.verify_signature(DATA, signature, signer.chain_pem, tmp_path)
    (tmp_path / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(FailedPrecondition, match=r"broken.pem is not valid PEM"):
        signing.verify_signature(DATA, signature, signer.chain_pem, tmp_path)
    # .crt files and bundles with several roots are read too
    (tmp_path / "broken.pem").unlink()
    bundle = PKI.new("bundle").root_pem() + keys.root_cert.read_bytes()
    (tmp_path / "roots.crt").write_bytes(bundle)
    signing.verify_signature(DATA, signature, signer.chain_pem, tmp_path)


def test_check_trust_dir_refuses_group_or_other_writable(tmp_path: Path, keys: signing.KeyPaths) -> None:
    trust = tmp_path / "trust"
    trust.mkdir(mode=0o755)
    cert = trust / "root.pem"
    cert.write_bytes(keys.root_cert.read_bytes())
    cert.chmod(0o644)
    trust.chmod(0o755)
    signing.check_trust_dir(trust)
    trust.chmod(0o775)
    with pytest.raises(FailedPrecondition, match=r"writable by group or others.*0775"):
        signing.check_trust_dir(trust)
    trust.chmod(0o757)
    with pytest.raises(FailedPrecondition, match=r"writable by group or others"):
        signing.check_trust_dir(trust)
    trust.chmod(0o755)
    cert.chmod(0o666)
    with pytest.raises(FailedPrecondition, match=r"root.pem is writable by group or others \(mode 0666\)"):
        signing.check_trust_dir(trust)
    with pytest.raises(FailedPrecondition, match=r"not accessible"):
        signing.check_trust_dir(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# Hand-made PKIs: intermediates and the key-usage / constraint rules.


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(*, sign: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


Key = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass
class Cert:
    key: Key
    cert: x509.Certificate

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_cert(
    cn: str,
    key: Key,
    issuer: Cert | None,
    *,
    ca: bool,
    path_length: int | None = None,
    usage: x509.KeyUsage | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=30),
    hash_algorithm: hashes.HashAlgorithm | None = None,
    basic_constraints: bool = True,
) -> Cert:
    signing_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if usage is None:
        usage = _usage(sign=not ca, cert_sign=ca)
    builder = builder.add_extension(usage, critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if hash_algorithm is None and not isinstance(signing_key, ed25519.Ed25519PrivateKey):
        hash_algorithm = hashes.SHA256()
    return Cert(key, builder.sign(signing_key, hash_algorithm))  # type: ignore[arg-type]


@dataclass
class PKI:
    root: Cert
    directory: Path | None = None

    @classmethod
    def new(cls, cn: str, **kwargs: object) -> PKI:
        return cls(make_cert(f"{cn} root", ed25519.Ed25519PrivateKey.generate(), None, ca=True, **kwargs))  # type: ignore[arg-type]

    def root_pem(self) -> bytes:
        return self.root.pem()

    def trust(self, tmp_path: Path) -> Path:
        trust = tmp_path / "trust"
        trust.mkdir(exist_ok=True)
        (trust / "root.pem").write_bytes(self.root_pem())
        return trust


def check(leaf: Cert, chain: Sequence[Cert], trust: Path) -> signing.CertificateInfo:
    key = leaf.key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(DATA)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(DATA, ec.ECDSA(hashes.SHA256()))
    else:
        signature = b"\x00" * 256
    pem = leaf.pem() + b"".join(c.pem() for c in chain)
    return signing.verify_signature(DATA, signature, pem, trust)


def ed() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def test_chain_through_intermediate(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    intermediate = make_cert("acme intermediate", ec.generate_private_key(ec.SECP256R1()), pki.root, ca=True)
    leaf = make_cert("acme signer", ec.generate_private_key(ec.SECP256R1()), intermediate, ca=False)
    info = check(leaf, [intermediate], pki.trust(tmp_path))
    assert info.subject == "CN=acme signer"
    assert info.key_algorithm == "ecdsa-p256"
    # the root may be shipped in the chain too, and intermediates in any order
    check(leaf, [pki.root, intermediate], pki.trust(tmp_path))


def test_missing_intermediate_is_untrusted(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    intermediate = make_cert("acme intermediate", ed(), pki.root, ca=True)
    leaf = make_cert("acme signer", ed(), intermediate, ca=False)
    with pytest.raises(SignatureError, match=r"untrusted signer.*'CN=acme intermediate'"):
        check(leaf, [], pki.trust(tmp_path))


def test_intermediate_that_is_not_a_ca(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    fake_ca = make_cert("acme fake", ed(), pki.root, ca=False, usage=_usage(sign=True, cert_sign=True))
    leaf = make_cert("acme signer", ed(), fake_ca, ca=False)
    with pytest.raises(SignatureError, match=r"intermediate certificate 'CN=acme fake' is not a CA"):
        check(leaf, [fake_ca], pki.trust(tmp_path))


def test_issuer_without_key_cert_sign(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    ca = make_cert("acme ca", ed(), pki.root, ca=True, usage=_usage(sign=True, cert_sign=False))
    leaf = make_cert("acme signer", ed(), ca, ca=False)
    with pytest.raises(SignatureError, match=r"'CN=acme ca' lacks the keyCertSign key usage"):
        check(leaf, [ca], pki.trust(tmp_path))


def test_path_length_constraint(tmp_path: Path) -> None:
    pki = PKI.new("acme", path_length=0)
    intermediate = make_cert("acme intermediate", ed(), pki.root, ca=True)
    leaf = make_cert("acme signer", ed(), intermediate, ca=False)
    with pytest.raises(SignatureError, match=r"root certificate 'CN=acme root' allows 0 intermediate"):
        check(leaf, [intermediate], pki.trust(tmp_path))


def test_root_expired(tmp_path: Path) -> None:
    pki = PKI.new("acme", not_after=NOW - timedelta(hours=1), not_before=NOW - timedelta(days=10))
    leaf = make_cert("acme signer", ed(), pki.root, ca=False)
    with pytest.raises(SignatureError, match=r"root certificate 'CN=acme root' expired at"):
        check(leaf, [], pki.trust(tmp_path))


def test_intermediate_not_yet_valid(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    intermediate = make_cert("acme intermediate", ed(), pki.root, ca=True, not_before=NOW + timedelta(days=1))
    leaf = make_cert("acme signer", ed(), intermediate, ca=False)
    with pytest.raises(
        SignatureError, match=r"intermediate certificate 'CN=acme intermediate' is not valid yet"
    ):
        check(leaf, [intermediate], pki.trust(tmp_path))


def test_signer_that_is_a_ca(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    leaf = make_cert("acme signer", ed(), pki.root, ca=True, usage=_usage(sign=True, cert_sign=True))
    with pytest.raises(SignatureError, match=r"is a CA certificate; packages must be signed by a leaf"):
        check(leaf, [], pki.trust(tmp_path))


def test_signer_without_digital_signature(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    leaf = make_cert("acme signer", ed(), pki.root, ca=False, usage=_usage(sign=False, cert_sign=False))
    with pytest.raises(SignatureError, match=r"lacks the digitalSignature key usage"):
        check(leaf, [], pki.trust(tmp_path))


def test_signer_extended_key_usage(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    web = make_cert("acme web", ed(), pki.root, ca=False, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(SignatureError, match=r"extended key usage without codeSigning"):
        check(web, [], pki.trust(tmp_path))
    code = make_cert("acme code", ed(), pki.root, ca=False, eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    check(code, [], pki.trust(tmp_path))


def test_signer_without_basic_constraints_is_a_leaf(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    leaf = make_cert("acme signer", ed(), pki.root, ca=False, basic_constraints=False)
    check(leaf, [], pki.trust(tmp_path))


def test_signer_key_type_must_be_supported(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    p384 = make_cert("acme p384", ec.generate_private_key(ec.SECP384R1()), pki.root, ca=False)
    with pytest.raises(SignatureError, match=r"has a ecdsa-secp384r1 key; supported: ed25519, ecdsa-p256"):
        check(p384, [], pki.trust(tmp_path))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_leaf = make_cert("acme rsa", rsa_key, pki.root, ca=False)
    with pytest.raises(SignatureError, match=r"has a RSAPublicKey key"):
        check(rsa_leaf, [], pki.trust(tmp_path))


def test_rsa_root_can_issue_signers(tmp_path: Path) -> None:
    root = make_cert(
        "corp root", rsa.generate_private_key(public_exponent=65537, key_size=2048), None, ca=True
    )
    leaf = make_cert("corp signer", ed(), root, ca=False)
    assert check(leaf, [], PKI(root).trust(tmp_path)).issuer == "CN=corp root"


def test_weak_certificate_hash_is_refused(tmp_path: Path) -> None:
    root = make_cert(
        "corp root", rsa.generate_private_key(public_exponent=65537, key_size=2048), None, ca=True
    )
    leaf = make_cert("corp signer", ed(), root, ca=False, hash_algorithm=hashes.SHA224())
    with pytest.raises(SignatureError, match=r"signed with sha224, which is not accepted"):
        check(leaf, [], PKI(root).trust(tmp_path))


def test_same_name_impostor_in_chain_is_skipped(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    real = make_cert("acme intermediate", ed(), pki.root, ca=True)
    impostor = make_cert("acme intermediate", ed(), pki.root, ca=True)
    leaf = make_cert("acme signer", ed(), real, ca=False)
    check(leaf, [impostor, real], pki.trust(tmp_path))


def test_too_long_chain(tmp_path: Path) -> None:
    pki = PKI.new("acme")
    chain = [make_cert(f"acme ca {i}", ed(), pki.root, ca=True) for i in range(signing.MAX_CHAIN_LENGTH)]
    leaf = make_cert("acme signer", ed(), pki.root, ca=False)
    with pytest.raises(SignatureError, match=r"chain has 9 certificates"):
        check(leaf, chain, pki.trust(tmp_path))
