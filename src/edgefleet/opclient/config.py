"""Where the operator client connects and with which token.

Resolution order for each setting: command-line flag, environment variable, the client file
written by ``edgefleet admin create-token --save``, built-in default.

Environment variables (the only ones edgefleet's operator client reads):
``EDGEFLEET_SERVER`` (base URL), ``EDGEFLEET_TOKEN`` (API token), ``EDGEFLEET_CA_CERT`` (PEM file
to verify the server with), ``EDGEFLEET_CLIENT_CONFIG`` (path of the client file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.core.errors import InvalidArgument

DEFAULT_SERVER = "https://127.0.0.1:8443"
ENV_SERVER = "EDGEFLEET_SERVER"
ENV_TOKEN = "EDGEFLEET_TOKEN"
ENV_CA_CERT = "EDGEFLEET_CA_CERT"
ENV_CLIENT_CONFIG = "EDGEFLEET_CLIENT_CONFIG"


def default_client_file() -> Path:
    """``$XDG_CONFIG_HOME/edgefleet/client.json`` (or ``~/.config/edgefleet/client.json``)."""
    explicit = os.environ.get(ENV_CLIENT_CONFIG)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet" / "client.json"


def default_ca_cert() -> Path | None:
    """The CA certificate of a server started with the default data directory on this machine."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    path = Path(base) / "edgefleet" / "tls" / "ca.pem"
    return path if path.is_file() else None


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the operator API."""

    server: str = DEFAULT_SERVER
    token: str | None = None
    #: PEM file of the CA that signed the server certificate; None uses the system trust store
    ca_cert: Path | None = None
    #: seconds to wait for a response (uploads get longer through streaming)
    timeout: float = 60.0
    #: where ``ca_cert`` came from (a flag, the environment, the client file, the default data
    #: directory), said when the server's certificate does not verify
    ca_cert_source: str = "given by the caller"

    def save(self, path: Path | None = None) -> Path:
        """Write this configuration (mode 0600: it holds the token) and return the path."""
        target = path or default_client_file()
        target.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "server": self.server,
            "token": self.token,
            "ca_cert": str(self.ca_cert) if self.ca_cert else None,
        }
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.chmod(target, 0o600)
        return target


def load_client_config(
    server: str | None = None, token: str | None = None, ca_cert: Path | None = None, *, timeout: float = 60.0
) -> ClientConfig:
    """Resolve the settings from flags, environment, client file and defaults."""
    saved: dict[str, str | None] = {}
    path = default_client_file()
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"cannot read the client file {path}: {exc}") from exc
        if isinstance(raw, dict):
            saved = {k: v for k, v in raw.items() if isinstance(v, str) or v is None}
    resolved_server = server or os.environ.get(ENV_SERVER) or saved.get("server") or DEFAULT_SERVER
    resolved_token = token or os.environ.get(ENV_TOKEN) or saved.get("token")
    resolved_ca: Path | None
    if ca_cert is not None:
        resolved_ca, source = ca_cert, "from --ca-cert"
    elif os.environ.get(ENV_CA_CERT):
        resolved_ca, source = Path(os.environ[ENV_CA_CERT]), f"from ${ENV_CA_CERT}"
    elif saved.get("ca_cert"):
        resolved_ca, source = Path(str(saved["ca_cert"])), f"from the client file {path}"
    else:
        resolved_ca = default_ca_cert()
        source = "from the default data directory" if resolved_ca is not None else "none given"
    if not resolved_server.startswith(("https://", "http://")):
        raise InvalidArgument(f"server URL {resolved_server!r} must start with https://")
    return ClientConfig(resolved_server.rstrip("/"), resolved_token, resolved_ca, timeout, source)
