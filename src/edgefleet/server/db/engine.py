"""The database handle: URL scheme registry, engine set-up, transactions and migrations.

SQLite (embedded default) runs in WAL mode and takes the write lock at ``BEGIN`` so that
concurrent request threads queue on ``busy_timeout`` instead of failing on lock upgrades.
PostgreSQL goes through psycopg 3. Migrations run at start under a lock so that several replicas
starting together do not race (an advisory lock on PostgreSQL; SQLite's own file lock).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    SQLColumnExpression,
    any_,
    create_engine,
    event,
    inspect,
    literal,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.core.errors import AlreadyExists, EdgefleetError, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
R = TypeVar("R")
V = TypeVar("V")
#: execution option: this connection only reads (SQLite then begins DEFERRED, not IMMEDIATE)
READ_ONLY = "edgefleet_read_only"

# URL scheme -> SQLAlchemy driver name used for it.
KNOWN_SCHEMES: dict[str, str] = {
    "sqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
}
_MIGRATION_LOCK_KEY = 0x6564_6765_666C  # "edgefl": pg advisory lock id for migrations
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def utc_now() -> datetime:
    """The default clock: aware UTC now."""
    return datetime.now(UTC)


def normalize_url(url: str) -> str:
    """Map a user URL (``sqlite:///f.db``, ``postgresql://...``) to a SQLAlchemy URL with our driver.

    Raises INVALID_ARGUMENT for an unparseable URL or an unknown scheme (listing the known ones).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidArgument(f"database URL {url!r} is not a valid URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend not in KNOWN_SCHEMES:
        raise InvalidArgument(
            f"database URL scheme {backend!r} is not supported (known: {', '.join(sorted(KNOWN_SCHEMES))})"
        )
    return parsed.set(drivername=KNOWN_SCHEMES[backend]).render_as_string(hide_password=False)


class Database:
    """An engine plus a session factory. ``session()`` is one transaction."""

    def __init__(self, url: str, *, clock: Clock = utc_now, pool_size: int = 10, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.clock = clock
        self.dialect = make_url(self.url).get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            database = make_url(self.url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (ArgumentError, ImportError) as exc:
            raise InvalidArgument(f"cannot open database {self.safe_url}: {exc}") from exc
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def safe_url(self) -> str:
        """The URL with any password masked (for logs and messages)."""
        return make_url(self.url).render_as_string(hide_password=True)

    def now(self) -> datetime:
        """The current time from the injected clock."""
        return self.clock()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error.

        Database errors are translated as by :meth:`translated_errors`.
        """
        session = self._sessions()
        try:
            with self.translated_errors(), session.begin():
                yield session
        finally:
            session.close()

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Translate database errors raised inside: integrity violations to ALREADY_EXISTS, values the
        database rejects to INVALID_ARGUMENT, connectivity to UNAVAILABLE; edgefleet errors pass."""
        try:
            yield
        except EdgefleetError:
            raise
        except IntegrityError as exc:
            raise AlreadyExists(f"conflicting write: {exc.orig}") from exc
        except DataError as exc:
            # The services check lengths and formats first; this is the backstop (e.g. a too-long string).
            raise InvalidArgument(f"a value does not fit the database: {exc.orig}") from exc
        except OperationalError as exc:
            raise Unavailable(f"database {self.safe_url} is unavailable: {exc.orig}") from exc

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent; safe with several replicas)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self.engine.begin() as connection:
                if self.dialect == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise Unavailable(f"cannot migrate database {self.safe_url}: {exc}") from exc
        log.info("database %s is at the newest schema revision", self.safe_url)

    def close(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so that BEGIN IMMEDIATE can be issued.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front (no failed lock upgrades); readers need no lock in WAL.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class HeldConnection:
    """One connection kept across transactions by a single thread (a batcher's), so that a batch
    costs no pool checkout and no liveness ping; re-opened when the database dropped it."""

    def __init__(self, db: Database, *, read_only: bool = False) -> None:
        self.db = db
        self.read_only = read_only
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[Connection], R]) -> R:
        """``work(connection)`` in one transaction, errors translated as by :meth:`Database.session`.

        A held connection that the database closed meanwhile (restart, idle reaper) fails on its
        first statement with nothing done: it is replaced and ``work`` runs once more.
        """
        with self._lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                try:
                    with self.db.translated_errors():
                        conn = self._connection()
                        with conn.begin():
                            return work(conn)
                except EdgefleetError as exc:
                    self._drop()
                    cause = exc.__cause__
                    stale = isinstance(cause, DBAPIError) and cause.connection_invalidated
                    if attempt == 2 or fresh or not stale:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Give the connection back."""
        with self._lock:
            self._drop()

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.db.engine.connect()
            self._conn = conn.execution_options(**{READ_ONLY: True}) if self.read_only else conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except SQLAlchemyError:  # already broken: nothing to give back
                log.debug("closing a broken held connection failed", exc_info=True)
            self._conn = None


def one_of(conn: Connection, column: SQLColumnExpression[V], values: Sequence[V]) -> ColumnElement[bool]:
    """``column IN (values)`` for a batch's values, as the database handles it best.

    On PostgreSQL ``column = ANY(:array)``: one parameter, so the statement text is the same
    whatever the batch size and psycopg prepares it once (an IN list of a new length is a new
    statement, planned again: that costs more than running it). Elsewhere a plain IN list.
    """
    if conn.dialect.name == "postgresql":
        element_type = inspect(column).type  # the column's own type, whether mapped attribute or column
        return column == any_(literal(list(values), ARRAY(element_type)))
    return column.in_(values)
