"""Device certificate renewal: a new key and certificate well before the current one expires.

Device certificates are valid for a year (the server's ``device_cert_days``). Once
``certificate.renew_after_fraction`` of the current certificate's lifetime has passed (two thirds by
default), :meth:`CertificateRenewal.check` renews it:

1. make a new key and a CSR signed by it, and send ``RenewCertificate`` over mutual TLS with the
   current certificate (the server keeps accepting the current one);
2. check the answer (a certificate for the new key and this device) and store the new pair beside
   the current one (``renewal.key``, ``renewal.crt``: atomic writes, fsynced);
3. confirm it: ``GetDeviceRegistration`` presenting the new pair. The server makes the renewed
   certificate current on that first use and revokes the old one;
4. install it: rename the new key, then the new certificate, over the current files.

A crash at any point leaves a usable identity: before step 2 the current pair is untouched and the
server still accepts it (a renewal it issued but never saw used is replaced by the next one); after
step 2 the stored pair is confirmed and installed on the next check (the server accepts it, whether
or not it saw it used before the crash); a crash inside step 4 is finished by
:func:`edgefleet.device.identity.load_identity`. While the server is unreachable the current pair
stays in use and the check is repeated.

A certificate past its end cannot be renewed (the server's TLS refuses it): the check says so once
in the log, with the way to enrol again, and the daemon keeps serving its models.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from edgefleet.core.deviceplane import Registration
from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.device.identity import (
    REENROL_HINT,
    CertificateValidity,
    Identity,
    certificate_validity,
    discard_renewal,
    has_renewal,
    install_renewal,
    make_csr,
    new_key,
    store_renewal,
)

log = logging.getLogger(__name__)

_OFFLINE = (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)


class RenewalState(enum.Enum):
    """What one :meth:`CertificateRenewal.check` found or did."""

    #: the certificate is not yet due for renewal
    NOT_DUE = "NOT_DUE"
    #: a new certificate was issued, confirmed with the server and installed
    RENEWED = "RENEWED"
    #: a new pair is on disk but could not be confirmed yet (server unreachable): tried again next time
    PENDING = "PENDING"
    #: renewal is due but the server is unreachable: tried again next time
    OFFLINE = "OFFLINE"
    #: the server refused the renewal; tried again after ``retry_seconds``
    REFUSED = "REFUSED"
    #: the certificate has expired: only a new enrolment helps
    EXPIRED = "EXPIRED"


class RenewingPlane(Protocol):
    """What renewal needs of the control plane (:class:`edgefleet.device.https.HttpsControlPlane`)."""

    def renew_certificate(self, csr_pem: str) -> str:
        """A certificate (PEM) for the CSR's key, asked for with the current certificate."""
        ...

    def use_certificate(self, cert: Path | None = None, key: Path | None = None) -> None:
        """Present this pair from the next request on (default: the identity's current files)."""
        ...

    def get_registration(self) -> Registration:
        """Any authenticated call: used to confirm a renewed certificate."""
        ...


class CertificateRenewal:
    """Renews the device certificate of ``identity`` through ``plane`` (see the module doc).

    ``now`` is the clock renewal decisions use (injected by tests, which run a short-lived
    certificate's renewal by moving it).
    """

    def __init__(
        self,
        identity: Identity,
        plane: RenewingPlane,
        *,
        renew_after_fraction: float = 2 / 3,
        retry_seconds: float = 3600.0,
        now: Callable[[], datetime],
    ) -> None:
        self.identity = identity
        self.plane = plane
        self.renew_after_fraction = renew_after_fraction
        self.retry_seconds = retry_seconds
        self._now = now
        self._validity: CertificateValidity | None = None
        self._retry_at: datetime | None = None
        self._said_expired = False

    @property
    def validity(self) -> CertificateValidity:
        """The current certificate's validity (read again after each renewal)."""
        if self._validity is None:
            self._validity = certificate_validity(self.identity.cert_path)
        return self._validity

    def due_at(self) -> datetime:
        """When the current certificate is due for renewal."""
        return self.validity.renew_from(self.renew_after_fraction)

    def check(self) -> RenewalState:
        """Renew the certificate if it is due (or finish a renewal a crash or an outage interrupted)."""
        if has_renewal(self.identity):
            return self._confirm()
        now = self._now()
        validity = self.validity
        if validity.expired(now):
            if not self._said_expired:
                log.error(
                    "the device certificate (serial %s) expired at %s: the server refuses it and it "
                    "cannot be renewed; %s",
                    validity.serial,
                    validity.not_after.isoformat(),
                    REENROL_HINT,
                )
                self._said_expired = True
            return RenewalState.EXPIRED
        if now < self.due_at() or (self._retry_at is not None and now < self._retry_at):
            return RenewalState.NOT_DUE
        key = new_key()
        try:
            cert_pem = self.plane.renew_certificate(make_csr(key))
        except EdgefleetError as exc:
            if exc.code in _OFFLINE:
                log.info("certificate renewal is due but the server is unreachable: %s", exc)
                return RenewalState.OFFLINE
            return self._refused(now, exc)
        try:
            store_renewal(self.identity, key, cert_pem)
        except EdgefleetError as exc:
            return self._refused(now, exc)
        return self._confirm()

    def _confirm(self) -> RenewalState:
        """Use the stored renewed pair once; install it if the server takes it."""
        paths = (self.identity.renewal_cert_path, self.identity.renewal_key_path)
        try:
            self.plane.use_certificate(*paths)
        except EdgefleetError as exc:  # damaged files (never written by us): renew afresh next time
            log.error("the stored renewed certificate cannot be used; discarding it: %s", exc)
            discard_renewal(self.identity)
            self.plane.use_certificate()
            return self._refused(self._now(), exc)
        try:
            self.plane.get_registration()
        except EdgefleetError as exc:
            self.plane.use_certificate()
            if exc.code is Code.UNAUTHENTICATED:
                # replaced or revoked on the server (re-enrolled, deregistered): the current pair stays
                log.error("the server refused the renewed certificate; discarding it: %s", exc)
                discard_renewal(self.identity)
                return self._refused(self._now(), exc)
            log.warning("the renewed certificate is stored but not confirmed yet: %s", exc)
            return RenewalState.PENDING
        install_renewal(self.identity)
        self.plane.use_certificate()
        self._validity = None
        self._retry_at = None
        self._said_expired = False
        log.info(
            "renewed the device certificate: serial %s, valid until %s",
            self.validity.serial,
            self.validity.not_after.isoformat(),
        )
        return RenewalState.RENEWED

    def _refused(self, now: datetime, exc: EdgefleetError) -> RenewalState:
        self._retry_at = now + timedelta(seconds=self.retry_seconds)
        log.error("certificate renewal failed (trying again after %s): %s", self._retry_at.isoformat(), exc)
        return RenewalState.REFUSED
