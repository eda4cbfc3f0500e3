"""Piccolo configuration: the engine chosen from DATABASE_URL, and every app's registry."""

from __future__ import annotations

from piccolo.conf.apps import AppRegistry
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, SQLiteTransaction, TransactionType

from server.settings import get_settings


class LeadkilnSQLiteEngine(SQLiteEngine):
    """SQLite with a busy timeout and IMMEDIATE write transactions.

    A deferred transaction that reads and then writes can fail with "database is
    locked" when another writer got in between; IMMEDIATE takes the write lock up
    front and the busy timeout makes the others queue instead of failing.
    """

    def transaction(  # type: ignore[override]
        self,
        transaction_type: TransactionType = TransactionType.immediate,
        allow_nested: bool = True,
    ) -> SQLiteTransaction:
        return super().transaction(transaction_type=transaction_type, allow_nested=allow_nested)

    async def get_connection(self):  # type: ignore[override]
        # The busy timeout comes from the connection's `timeout`; NORMAL is safe in WAL mode
        # (a power cut may lose the last commits, never corrupt) and spares an fsync per commit.
        connection = await super().get_connection()
        await connection.execute("PRAGMA synchronous = NORMAL")
        return connection


def _write_ahead_log(path: str) -> None:
    """WAL mode (kept in the file): readers never wait for the writer, commits are cheaper."""
    import sqlite3

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
    ]
)
