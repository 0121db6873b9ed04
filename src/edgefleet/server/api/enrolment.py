"""Enrolment (no client certificate yet): the fleet CA certificate, and token + CSR -> certificate.

This router is served on the operator/enrolment listener, which does not ask for client
certificates. A device first fetches the CA certificate without verifying TLS, checks it against the
SHA-256 pinned in its enrolment token, and then enrols over TLS verified with that CA.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from edgefleet.server import devices
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state
from edgefleet.server.api.errors import ERROR_RESPONSES

router = APIRouter(prefix="/enrol/v1", tags=["enrolment"], responses=ERROR_RESPONSES)


@router.get("/ca.pem", response_class=PlainTextResponse, summary="The fleet CA certificate (PEM)")
def ca_certificate(request: Request) -> PlainTextResponse:
    return PlainTextResponse(app_state(request).ca.cert_pem, media_type="application/x-pem-file")


@router.post(
    "/enrol",
    response_model=s.EnrolResponse,
    summary="Exchange an enrolment token and a CSR for a certificate",
)
def enrol(body: s.EnrolRequest, request: Request) -> s.EnrolResponse:
    """The token is used up; a certificate the device held before is revoked."""
    st = app_state(request)
    with st.db.session() as session:
        device, cert_pem = devices.enrol(
            session,
            body.EnrolmentToken,
            body.CertificateSigningRequest,
            st.ca,
            st.db.now(),
            st.config.timing.device_cert_days,
        )
        assert device.cert_not_after is not None
        return s.EnrolResponse(
            DeviceName=device.name,
            DeviceFleetName=device.fleet.name,
            Certificate=cert_pem,
            CertificateChain=[st.ca.cert_pem],
            CertificateExpiresAt=device.cert_not_after,
            DeviceEndpoint=st.device_url,
        )
