"""``edgefleet admin``: administer a control plane's database directly (tokens, migrations, CA)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _add_db_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="the server's state directory (default: ~/.local/share/edgefleet)"
    )
    parser.add_argument("--database", help="the server's database URL (default: SQLite in --data-dir)")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("admin", help="administer the control plane's database (tokens, migrations)")
    commands = parser.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)

    create = commands.add_parser("create-token", help="create an operator API token (printed once)")
    create.add_argument("name", help="who or what the token is for (recorded as the actor of its changes)")
    _add_db_args(create)
    create.add_argument(
        "--save", action="store_true", help="also save server URL, token and CA in the client file"
    )
    create.add_argument("--server", help="server URL to save with --save (default: https://127.0.0.1:8443)")
    create.set_defaults(func=create_token)

    listing = commands.add_parser("list-tokens", help="list operator API tokens")
    _add_db_args(listing)
    listing.set_defaults(func=list_tokens)

    revoke = commands.add_parser("revoke-token", help="revoke an operator API token")
    revoke.add_argument("name", help="the token's name (as in list-tokens)")
    _add_db_args(revoke)
    revoke.set_defaults(func=revoke_token)

    migrate = commands.add_parser(
        "migrate", help="bring the database schema up to date (servers also do it at start)"
    )
    _add_db_args(migrate)
    migrate.set_defaults(func=run_migrate)


def _database(args: argparse.Namespace) -> Any:
    import logging

    from edgefleet.server.config import ServerConfig, default_data_dir
    from edgefleet.server.db.engine import Database

    config = ServerConfig(data_dir=args.data_dir or default_data_dir(), database_url=args.database)
    db = Database(config.resolved_database_url)
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    db.migrate()
    return db, config


def create_token(args: argparse.Namespace) -> int:
    from edgefleet.opclient.config import DEFAULT_SERVER, ClientConfig
    from edgefleet.server import tokens

    db, config = _database(args)
    try:
        with db.session() as session:
            secret = tokens.create_token(session, args.name, db.now())
    finally:
        db.close()
    print(secret)
    print(f"token {args.name!r} created; it is shown only now, store it safely", file=sys.stderr)
    if args.save:
        ca = config.data_dir / "tls" / "ca.pem"
        saved = ClientConfig(args.server or DEFAULT_SERVER, secret, ca if ca.is_file() else None).save()
        print(f"saved the server URL, token and CA certificate in {saved}", file=sys.stderr)
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    from edgefleet.cli.output import table
    from edgefleet.server import tokens

    db, _ = _database(args)
    try:
        with db.session() as session:
            rows = [
                {"name": t.name, "created": t.created_at, "used": t.last_used_at, "revoked": t.revoked_at}
                for t in tokens.list_tokens(session)
            ]
    finally:
        db.close()
    table(rows, [("NAME", "name"), ("CREATED", "created"), ("LAST USED", "used"), ("REVOKED", "revoked")])
    return 0


def revoke_token(args: argparse.Namespace) -> int:
    from edgefleet.server import tokens

    db, _ = _database(args)
    try:
        with db.session() as session:
            tokens.revoke_token(session, args.name, db.now())
    finally:
        db.close()
    print(f"token {args.name!r} revoked")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    db, _ = _database(args)
    db.close()
    print(f"database {db.safe_url} is up to date")
    return 0
