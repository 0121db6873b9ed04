"""``edgefleet keys``: create the package-signing keys (a root CA and a signer certificate)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register ``keys`` and its sub-commands."""
    parser = subparsers.add_parser("keys", help="manage package-signing keys")
    sub = parser.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    init = sub.add_parser(
        "init",
        help="create a root CA and a signer certificate + keys",
        description=(
            "Create DIR/trust/root-ca.pem (the trust directory: copy it to devices), DIR/root-ca.key, "
            "DIR/signer.key and DIR/signer.pem. Private keys are written with mode 0600."
        ),
    )
    init.add_argument("directory", metavar="DIR", type=Path, help="key directory to create")
    init.add_argument(
        "--algorithm", choices=("ed25519", "ecdsa-p256"), default="ed25519", help="key type (default ed25519)"
    )
    init.add_argument("--common-name", default="edgefleet", help="name used in the certificates' subjects")
    init.add_argument(
        "--days", type=int, default=1095, help="signer certificate validity in days (default 1095)"
    )
    init.add_argument("--force", action="store_true", help="replace existing keys")
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    from edgefleet.core.signing import init_keys, load_signer

    paths = init_keys(
        args.directory,
        common_name=args.common_name,
        algorithm=args.algorithm,
        days=args.days,
        force=args.force,
    )
    signer = load_signer(paths.directory)
    print(f"signer key:        {paths.signer_key}")
    print(
        f"signer cert:       {paths.signer_cert} ({signer.algorithm}, valid until "
        f"{signer.certificate.not_valid_after_utc:%Y-%m-%d})"
    )
    print(f"root CA key:       {paths.root_key} (keep it offline)")
    print(f"trust directory:   {paths.trust_dir} (copy it to devices)")
    return 0
