"""Piccolo configuration: the engine chosen from DATABASE_URL, and every app's registry."""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite
from piccolo.conf.apps import AppRegistry
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, SQLiteTransaction, TransactionType, dict_factory

from server.settings import get_settings


IDLE_CONNECTIONS = 24
"""Open SQLite connections kept for the next query or transaction, per process: one for each
of the worker's 20 concurrent jobs (WorkerSettings.max_jobs) and its crons, so a busy worker
never opens one (a thread and its PRAGMAs) per statement. An idle one is a parked thread and
three file handles; a web process keeps as many at most, and only after it needed them."""


class _Pooled:
    """A connection lent to one transaction: closing it gives it back to the engine."""

    def __init__(self, connection: aiosqlite.Connection, engine: "LeadkilnSQLiteEngine") -> None:
        self._connection = connection
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    async def close(self) -> None:
        await self._engine.give_back(self._connection)


class LeadkilnSQLiteEngine(SQLiteEngine):
    """SQLite with a busy timeout, IMMEDIATE write transactions and reused connections.

    A deferred transaction that reads and then writes can fail with "database is
    locked" when another writer got in between; IMMEDIATE takes the write lock up
    front and the busy timeout makes the others queue instead of failing. Piccolo opens
    a connection (and its thread) for every transaction and every statement outside one;
    connections are kept open instead, which takes about a millisecond off each.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle: list[aiosqlite.Connection] = []

    def transaction(  # type: ignore[override]
        self,
        transaction_type: TransactionType = TransactionType.immediate,
        allow_nested: bool = True,
    ) -> SQLiteTransaction:
        return super().transaction(transaction_type=transaction_type, allow_nested=allow_nested)

    async def get_connection(self):  # type: ignore[override]
        while self._idle:
            connection = self._idle.pop()
            if connection._connection is not None:  # still open
                return _Pooled(connection, self)
        # The busy timeout comes from the connection's `timeout`; NORMAL is safe in WAL mode
        # (a power cut may lose the last commits, never corrupt) and spares an fsync per commit.
        connection = aiosqlite.connect(**self.connection_kwargs)
        # A kept connection's thread must not hold the process open at exit (aiosqlite's
        # threads are not daemons; its connection is closed by the OS, committed data is safe).
        connection._thread.daemon = True
        await connection
        connection.row_factory = dict_factory  # type: ignore[assignment]
        # Checkpoints on these connections only every 10,000 pages (40 MB): a checkpoint in the
        # commit path was the slowest 1% of short transactions. The worker checkpoints the
        # log every few seconds off that path (`checkpoint`), so it rarely grows that far.
        await connection.executescript(
            "PRAGMA foreign_keys = 1; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 10000;")
        return _Pooled(connection, self)

    async def give_back(self, connection: aiosqlite.Connection) -> None:
        """Keep a connection for the next transaction, unless it is mid-transaction (a
        rollback that failed) or enough are kept already."""
        try:
            reusable = connection._connection is not None and not connection.in_transaction
        except Exception:  # noqa: BLE001 - a broken connection is closed, not reused
            reusable = False
        if reusable and len(self._idle) < IDLE_CONNECTIONS:
            self._idle.append(connection)
            return
        await connection.close()

    async def _run_in_existing_connection(  # type: ignore[override]
        self, connection, query: str, args: list[Any] | None = None, query_type: str = "generic", table: Any = None
    ):
        """A query inside a transaction, in one trip to the connection's thread.

        Piccolo repeats `PRAGMA foreign_keys = 1` before each query (set once when the
        connection opened, it holds for its life) and then executes, fetches and closes the
        cursor in three more trips; each trip is a hand-off between threads.
        """
        return list(await connection.execute_fetchall(query, args or []))

    async def _run_in_new_connection(  # type: ignore[override]
        self, query: str, args: list[Any] | None = None, query_type: str = "generic", table: Any = None
    ):
        """A statement outside a transaction, on a kept connection (autocommit: it commits
        when it has run, as on a new one)."""
        connection = await self.get_connection()
        try:
            return list(await connection.execute_fetchall(query, args or []))
        finally:
            await connection.close()


async def checkpoint() -> None:
    """Copy SQLite's write-ahead log back into the database without waiting for anyone
    (PASSIVE); nothing to do on PostgreSQL."""
    engine = DB
    if isinstance(engine, SQLiteEngine):
        await engine.run_ddl("PRAGMA wal_checkpoint(PASSIVE)")


def _write_ahead_log(path: str) -> None:
    """WAL mode (kept in the file): readers never wait for the writer, commits are cheaper."""
    if sqlite3.sqlite_version_info < (3, 35):
        # INSERT … ON CONFLICT … RETURNING, which the send ledger and the scores rely on.
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old: leadkiln needs 3.35 or newer")
    connection = sqlite3.connect(path, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
    finally:
        connection.close()


def build_engine() -> Engine:
    """The database engine for the configured DATABASE_URL."""
    settings = get_settings()
    config = settings.database
    if config.engine == "sqlite":
        assert config.path is not None
        config.path.parent.mkdir(parents=True, exist_ok=True)
        _write_ahead_log(str(config.path))
        return LeadkilnSQLiteEngine(path=str(config.path), timeout=30)
    return PostgresEngine(config=config.postgres_config(), log_queries=False)


DB = build_engine()

APP_REGISTRY = AppRegistry(
    apps=[
        "piccolo.apps.user.piccolo_app",
        "piccolo_api.session_auth.piccolo_app",
        "landing.piccolo_app",
        "content.piccolo_app",
        "scoring.piccolo_app",
        "server.piccolo_app",
        "admin.piccolo_app",
    ]
)
