"""Package signing keys, signatures and certificate-chain verification (package format v1).

A package is signed by a *signer* key (Ed25519 or ECDSA P-256) whose X.509 certificate chains,
through optional intermediate CAs shipped in the package's ``signer-chain.pem``, to a root
certificate in the device's *trust directory*. The signature covers the manifest's exact bytes.
See docs/package-format.md for the contract; this module is its implementation.

Key directory layout made by :func:`init_keys` (the trust directory is what devices get)::

    DIR/trust/root-ca.pem   root CA certificate (public)
    DIR/root-ca.key         root CA private key (0600)
    DIR/signer.key          signer private key (0600)
    DIR/signer.pem          signer certificate, followed by any intermediate CA certificates
"""

from __future__ import annotations

import hashlib
import logging
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, SignatureError
from edgefleet.core.files import atomic_writer

log = logging.getLogger(__name__)

Algorithm = Literal["ed25519", "ecdsa-p256"]
ALGORITHMS: tuple[Algorithm, ...] = ("ed25519", "ecdsa-p256")

TRUST_DIR_NAME = "trust"
ROOT_CERT_FILE = "root-ca.pem"
ROOT_KEY_FILE = "root-ca.key"
SIGNER_KEY_FILE = "signer.key"
SIGNER_CERT_FILE = "signer.pem"
# Certificate files read from a trust directory.
TRUST_SUFFIXES = (".pem", ".crt")

#: Longest chain accepted (signer + intermediates + root); real PKIs use 2-4.
MAX_CHAIN_LENGTH = 8
#: Size caps for the small PEM/signature inputs, so a hostile package cannot make us parse megabytes.
MAX_CHAIN_BYTES = 256 * 1024
MAX_SIGNATURE_BYTES = 1024
MAX_TRUST_FILE_BYTES = 1024 * 1024
#: Certificates are back-dated this much so that devices whose clock lags a little still accept them.
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_ROOT_DAYS = 3650
DEFAULT_SIGNER_DAYS = 1095

SignerPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
_ACCEPTED_CERT_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True)
class KeyPaths:
    """Where :func:`init_keys` put things. ``trust_dir`` is the folder devices trust."""

    directory: Path
    trust_dir: Path
    root_cert: Path
    root_key: Path
    signer_key: Path
    signer_cert: Path


@dataclass(frozen=True)
class Signer:
    """A loaded signer: private key, its certificate and the chain written into packages."""

    private_key: SignerPrivateKey
    certificate: x509.Certificate
    #: signer certificate first, then intermediates; the exact bytes of ``signer-chain.pem``
    chain_pem: bytes

    @property
    def algorithm(self) -> Algorithm:
        """``ed25519`` or ``ecdsa-p256``."""
        return "ed25519" if isinstance(self.private_key, ed25519.Ed25519PrivateKey) else "ecdsa-p256"


@dataclass(frozen=True)
class CertificateInfo:
    """What a person needs to recognise a certificate."""

    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    #: SHA-256 of the DER encoding, lower-case hex
    fingerprint_sha256: str
    key_algorithm: str

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form (times in RFC 3339 UTC)."""
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "fingerprint_sha256": self.fingerprint_sha256,
            "key_algorithm": self.key_algorithm,
        }


# --------------------------------------------------------------------------------------------
# Key creation


def init_keys(
    directory: Path | str,
    *,
    common_name: str = "edgefleet",
    algorithm: Algorithm = "ed25519",
    days: int = DEFAULT_SIGNER_DAYS,
    root_days: int = DEFAULT_ROOT_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> KeyPaths:
    """Create a root CA and a signer certificate issued by it under ``directory``.

    ``days`` is the signer certificate's validity, ``root_days`` the root's (never shorter than
    the signer's). Existing keys are never overwritten unless ``force`` (ALREADY_EXISTS).
    Private keys are written with mode 0600.
    """
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(f"unknown key algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    if days < 1 or root_days < 1:
        raise InvalidArgument("certificate validity must be at least one day")
    if not common_name or len(common_name) > 40:
        raise InvalidArgument("common name must be 1-40 characters")
    base = Path(directory)
    paths = KeyPaths(
        directory=base,
        trust_dir=base / TRUST_DIR_NAME,
        root_cert=base / TRUST_DIR_NAME / ROOT_CERT_FILE,
        root_key=base / ROOT_KEY_FILE,
        signer_key=base / SIGNER_KEY_FILE,
        signer_cert=base / SIGNER_CERT_FILE,
    )
    existing = [
        p for p in (paths.root_cert, paths.root_key, paths.signer_key, paths.signer_cert) if p.exists()
    ]
    if existing and not force:
        raise AlreadyExists(
            f"keys already exist ({', '.join(str(p) for p in existing)}); refusing to overwrite them "
            "(use --force to replace them; packages signed with the old keys will no longer verify)"
        )
    start = (now or datetime.now(UTC)) - CLOCK_SKEW
    root_key = _new_key(algorithm)
    signer_key = _new_key(algorithm)
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} root CA")])
    signer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} package signer")])
    root_pub = root_key.public_key()
    root_cert = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=max(root_days, days)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_pub), critical=False)
        .sign(root_key, _signing_hash(root_key))
    )
    signer_pub = signer_key.public_key()
    signer_cert = (
        x509.CertificateBuilder()
        .subject_name(signer_name)
        .issuer_name(root_name)
        .public_key(signer_pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_pub), critical=False)
        .sign(root_key, _signing_hash(root_key))
    )
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths.trust_dir.mkdir(mode=0o755, exist_ok=True)
        _write_file(paths.root_key, _private_pem(root_key), 0o600)
        _write_file(paths.signer_key, _private_pem(signer_key), 0o600)
        _write_file(paths.signer_cert, signer_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write_file(paths.root_cert, root_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise FailedPrecondition(f"cannot write keys under {base}: {exc}") from exc
    log.info("created %s root CA and signer in %s", algorithm, base)
    return paths


def _new_key(algorithm: Algorithm) -> SignerPrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _signing_hash(key: SignerPrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs the message itself; certificate builders must be given no hash for it.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _private_pem(key: SignerPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically (temp file + rename) with ``mode`` set before any byte lands."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data)


# --------------------------------------------------------------------------------------------
# Signing


def load_signer(key_dir: Path | str, *, password: bytes | None = None, now: datetime | None = None) -> Signer:
    """Load ``signer.key`` and ``signer.pem`` from ``key_dir`` and check they can sign now.

    NOT_FOUND when the files are missing; FAILED_PRECONDITION when the key does not match the
    certificate, or the certificate is expired, not yet valid or not a signing certificate.
    """
    base = Path(key_dir)
    key_path, cert_path = base / SIGNER_KEY_FILE, base / SIGNER_CERT_FILE
    for p in (key_path, cert_path):
        if not p.is_file():
            raise NotFound(f"{p} not found (create keys with: edgefleet keys init {base})")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=password)
        chain_pem = cert_path.read_bytes()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise FailedPrecondition(f"cannot read the signer key {key_path}: {exc}") from exc
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the signer files in {base}: {exc}") from exc
    if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
        raise FailedPrecondition(
            f"signer key {key_path} uses curve {key.curve.name}; only P-256 is supported"
        )
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise FailedPrecondition(
            f"signer key {key_path} is a {type(key).__name__}; supported: {', '.join(ALGORITHMS)}"
        )
    certs = _parse_pem_certificates(chain_pem, str(cert_path), FailedPrecondition)
    cert = certs[0]
    if cert.public_key() != key.public_key():
        raise FailedPrecondition(f"the signer key {key_path} does not match the certificate in {cert_path}")
    _check_dates(cert, "signer certificate", now or datetime.now(UTC), FailedPrecondition)
    _check_signer_usage(cert, FailedPrecondition)
    return Signer(private_key=key, certificate=cert, chain_pem=chain_pem)


def sign(manifest_bytes: bytes, signer: Signer) -> bytes:
    """The content of ``manifest.sig``: the raw signature over ``manifest_bytes``.

    Ed25519: the 64-byte signature. ECDSA P-256: the DER-encoded signature over SHA-256.
    """
    if isinstance(signer.private_key, ed25519.Ed25519PrivateKey):
        return signer.private_key.sign(manifest_bytes)
    return signer.private_key.sign(manifest_bytes, ec.ECDSA(hashes.SHA256()))


# --------------------------------------------------------------------------------------------
# Verification


def check_trust_dir(trust_dir: Path | str) -> None:
    """Refuse a trust directory (or a certificate in it) that group or others may write.

    Whoever can write there can make the device trust any signer. FAILED_PRECONDITION.
    """
    base = Path(trust_dir)
    try:
        st = base.stat()
    except OSError as exc:
        raise FailedPrecondition(f"trust directory {base} is not accessible: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"trust directory {base} is not a directory")
    if st.st_mode & 0o022:
        raise FailedPrecondition(
            f"trust directory {base} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "run: chmod go-w on it"
        )
    for path in _trust_files(base):
        mode = path.stat().st_mode
        if mode & 0o022:
            raise FailedPrecondition(
                f"trusted certificate {path} is writable by group or others (mode {stat.S_IMODE(mode):04o})"
            )


def load_trust_store(trust_dir: Path | str) -> tuple[x509.Certificate, ...]:
    """Every certificate in the ``*.pem``/``*.crt`` files of ``trust_dir`` (FAILED_PRECONDITION if none)."""
    base = Path(trust_dir)
    if not base.is_dir():
        raise FailedPrecondition(f"trust directory {base} does not exist")
    anchors: list[x509.Certificate] = []
    for path in _trust_files(base):
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_TRUST_FILE_BYTES + 1)
        except OSError as exc:
            raise FailedPrecondition(f"cannot read trusted certificate {path}: {exc}") from exc
        if len(data) > MAX_TRUST_FILE_BYTES:
            raise FailedPrecondition(
                f"trusted certificate file {path} is larger than {MAX_TRUST_FILE_BYTES} bytes"
            )
        anchors.extend(_parse_pem_certificates(data, str(path), FailedPrecondition))
    if not anchors:
        raise FailedPrecondition(
            f"trust directory {base} holds no certificates (*{', *'.join(TRUST_SUFFIXES)} files)"
        )
    return tuple(anchors)


def verify_signature(
    manifest_bytes: bytes,
    signature: bytes,
    chain_pem: bytes,
    trust_dir: Path | str,
    *,
    now: datetime | None = None,
) -> CertificateInfo:
    """Verify ``signature`` over ``manifest_bytes`` by the first certificate of ``chain_pem``.

    Checks, in order: the chain from the signer certificate through intermediates in
    ``chain_pem`` to a certificate of ``trust_dir`` (issuer names and each certificate's
    signature), every certificate's validity dates at ``now``, key usage (signer:
    digitalSignature and not a CA; issuers: CA with keyCertSign, path length), then the
    signature itself. Any failure raises :class:`SignatureError` (FAILED_PRECONDITION) saying
    what failed. Returns the signer certificate's description.
    """
    when = now or datetime.now(UTC)
    if when.tzinfo is None:
        raise InvalidArgument("now must be timezone-aware")
    anchors = load_trust_store(trust_dir)
    if len(chain_pem) > MAX_CHAIN_BYTES:
        raise SignatureError(f"signer certificate chain is larger than {MAX_CHAIN_BYTES} bytes")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"signature is larger than {MAX_SIGNATURE_BYTES} bytes")
    certs = _parse_pem_certificates(chain_pem, "the signer certificate chain", SignatureError)
    if len(certs) > MAX_CHAIN_LENGTH:
        raise SignatureError(
            f"signer certificate chain has {len(certs)} certificates (at most {MAX_CHAIN_LENGTH})"
        )
    path = _build_path(certs[0], certs[1:], anchors, Path(trust_dir))
    signer_cert = path[0]
    _check_dates(signer_cert, "signer certificate", when, SignatureError)
    _check_signer_usage(signer_cert, SignatureError)
    for depth, issuer in enumerate(path[1:], start=1):
        what = "root certificate" if depth == len(path) - 1 else "intermediate certificate"
        _check_dates(issuer, what, when, SignatureError)
        _check_issuer_usage(issuer, what, cas_below=depth - 1)
    _verify_manifest_signature(signer_cert, manifest_bytes, signature)
    return describe_certificate(signer_cert)


def describe_certificate(cert: x509.Certificate) -> CertificateInfo:
    """Subject, issuer, validity and fingerprint of ``cert``."""
    key = cert.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        algorithm = "ed25519"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = "ecdsa-p256" if isinstance(key.curve, ec.SECP256R1) else f"ecdsa-{key.curve.name}"
    else:
        algorithm = type(key).__name__
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        key_algorithm=algorithm,
    )


def parse_chain(chain_pem: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates of a ``signer-chain.pem`` (INVALID_ARGUMENT-free: SignatureError if unreadable)."""
    if len(chain_pem) > MAX_CHAIN_BYTES:
        raise SignatureError(f"signer certificate chain is larger than {MAX_CHAIN_BYTES} bytes")
    return tuple(_parse_pem_certificates(chain_pem, "the signer certificate chain", SignatureError))


def _trust_files(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.suffix.lower() in TRUST_SUFFIXES and p.is_file())


def _parse_pem_certificates(
    data: bytes, where: str, error: type[FailedPrecondition]
) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise error(f"{where} holds no certificate (no PEM CERTIFICATE block)")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise error(f"{where} is not valid PEM certificates: {exc}") from exc
    if not certs:
        raise error(f"{where} holds no certificate")
    return certs


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _build_path(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    trust_dir: Path,
) -> list[x509.Certificate]:
    """Signer, intermediates..., trust anchor; each certificate verified as issued by the next."""
    path = [leaf]
    current = leaf
    unused = list(intermediates)
    while len(path) <= MAX_CHAIN_LENGTH:
        anchor = _find_issuer(current, anchors)
        if anchor is not None:
            path.append(anchor)
            return path
        parent = _find_issuer(current, unused)
        if parent is None:
            break
        unused.remove(parent)
        path.append(parent)
        current = parent
    if any(anchor.subject == current.issuer for anchor in anchors):
        raise SignatureError(
            f"untrusted signer: certificate {_name(current)!r} names {current.issuer.rfc4514_string()!r} as "
            f"its issuer; the trust directory {trust_dir} has a certificate of that name, but with another "
            "key (the package was signed under a different root CA)"
        )
    raise SignatureError(
        f"untrusted signer: certificate {_name(current)!r} was issued by "
        f"{current.issuer.rfc4514_string()!r}, "
        f"which is neither a certificate of the trust directory {trust_dir} nor verifiably in the package's "
        "signer chain"
    )


def _find_issuer(cert: x509.Certificate, candidates: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """The candidate that issued ``cert`` (matching name and a valid signature on it)."""
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        _check_cert_hash(cert)
        try:
            cert.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            continue  # same name, different key: keep looking, then report untrusted
        return candidate
    return None


def _check_cert_hash(cert: x509.Certificate) -> None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise SignatureError(f"certificate {_name(cert)!r} uses an unsupported signature algorithm") from exc
    if algorithm is not None and not isinstance(algorithm, _ACCEPTED_CERT_HASHES):
        raise SignatureError(
            f"certificate {_name(cert)!r} is signed with {algorithm.name}, which is not accepted "
            "(SHA-256 or stronger)"
        )


def _check_dates(cert: x509.Certificate, what: str, now: datetime, error: type[FailedPrecondition]) -> None:
    if now < cert.not_valid_before_utc:
        raise error(
            f"{what} {_name(cert)!r} is not valid yet: valid from {_iso(cert.not_valid_before_utc)} "
            f"(now is {_iso(now)}; check the device clock)"
        )
    if now > cert.not_valid_after_utc:
        raise error(
            f"{what} {_name(cert)!r} expired at {_iso(cert.not_valid_after_utc)} (now is {_iso(now)})"
        )


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise SignatureError(f"certificate {_name(cert)!r} has malformed extensions: {exc}") from exc


def _check_signer_usage(cert: x509.Certificate, error: type[FailedPrecondition]) -> None:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise error(
            f"signer certificate {_name(cert)!r} is a CA certificate; packages must be signed by a leaf"
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        raise error(f"signer certificate {_name(cert)!r} lacks the digitalSignature key usage")
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None and not {
        ExtendedKeyUsageOID.CODE_SIGNING,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    } & set(eku):
        raise error(f"signer certificate {_name(cert)!r} has an extended key usage without codeSigning")
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise error(
            f"signer certificate {_name(cert)!r} has a {describe_certificate(cert).key_algorithm} key; "
            f"supported: {', '.join(ALGORITHMS)}"
        )


def _check_issuer_usage(cert: x509.Certificate, what: str, *, cas_below: int) -> None:
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise SignatureError(f"{what} {_name(cert)!r} is not a CA (basicConstraints CA:true missing)")
    if constraints.path_length is not None and cas_below > constraints.path_length:
        raise SignatureError(
            f"{what} {_name(cert)!r} allows {constraints.path_length} intermediate CA(s) below it, "
            f"the chain has {cas_below}"
        )
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.key_cert_sign:
        raise SignatureError(f"{what} {_name(cert)!r} lacks the keyCertSign key usage")


def _verify_manifest_signature(cert: x509.Certificate, data: bytes, signature: bytes) -> None:
    key = cert.public_key()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:  # _check_signer_usage already refused other key types
            raise SignatureError(f"signer certificate {_name(cert)!r} has an unsupported key")
    except InvalidSignature as exc:
        raise SignatureError(
            "bad signature: manifest.sig does not verify against the manifest with the key of "
            f"{_name(cert)!r} "
            "(the manifest was changed or signed by another key)"
        ) from exc


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
