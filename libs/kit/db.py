"""Database wiring: one engine per service (SQLite by default, PostgreSQL in production) and units of work.

Services never commit: the request wrapper (:func:`kit.app.SessionDep`) and the message wrapper
(:class:`kit.consumer.DurableConsumer`) commit once, so a business row and its outbox row land together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine

__all__ = ["Database", "as_utc", "on_commit", "utcnow"]

log = logging.getLogger(__name__)

_ON_COMMIT = "maillage.on_commit"


def utcnow() -> datetime:
    """The current time, aware, in UTC (what every timestamp column stores)."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware datetime: SQLite hands back naive UTC values that PostgreSQL returns aware."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def on_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once ``session``'s transaction has committed (never when it rolls back).

    For side effects outside the database (an in-memory index, a cache) that must follow the durable state.
    """
    session.info.setdefault(_ON_COMMIT, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_on_commit(session: Session) -> None:
    for callback in session.info.pop(_ON_COMMIT, []):
        try:
            callback()
        except Exception:  # noqa: BLE001 - the transaction is committed; a failed side effect must not undo that
            log.exception("on-commit callback failed")


@event.listens_for(Session, "after_rollback")
def _drop_on_commit(session: Session) -> None:
    session.info.pop(_ON_COMMIT, None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """An engine and a session factory."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=10)
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def create_all(self) -> None:
        """Create the tables of every imported SQLModel model that does not exist yet."""
        SQLModel.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that is rolled back when the block raises. The caller commits."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """A session committed when the block ends normally, rolled back otherwise."""
        with self.session() as session:
            yield session
            session.commit()

    def ping(self) -> None:
        """Raise when the database does not answer ``SELECT 1``."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
