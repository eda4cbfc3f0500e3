"""Real services for the tests: the machine's PostgreSQL and Redis when running, else started here."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Services:
    """What a test session runs against; `stop()` ends whatever it started itself."""

    redis_url: str
    database_url: str
    _cleanup: list = field(default_factory=list)

    def stop(self) -> None:
        for action in reversed(self._cleanup):
            try:
                action()
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass


def _url_for(base: str, database: str) -> str:
    """`base` is a server URL without its database; it may carry `?host=/socket/dir`."""
    server, _, query = base.partition("?")
    return f"{server}/{database}" + (f"?{query}" if query else "")


def _start_local_postgres() -> str | None:
    """Start the machine's PostgreSQL cluster if one is installed (Debian's pg_ctlcluster)."""
    versions = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") and versions.exists():
        for version in sorted(versions.iterdir()):
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version.name, "main", "start"],
                           capture_output=True, timeout=60)
        if answers("127.0.0.1", 5432):
            return "postgres://postgres@127.0.0.1:5432"
    return None


def _start_pgserver(data_dir: Path, cleanup: list) -> str:
    """A private PostgreSQL from the pgserver wheel (test extra), for a machine with none installed.

    It listens on a Unix socket only, so the base URL names the socket directory.
    """
    import logging

    import pgserver

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    server = pgserver.get_server(str(data_dir / "pgdata"), cleanup_mode="stop")
    cleanup.append(server.cleanup)
    return f"postgresql://postgres@?host={server.get_postmaster_info().socket_dir}"


async def _on_maintenance_db(admin_base: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_url_for(admin_base, "postgres"), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _create_database(admin_base: str, name: str) -> None:
    import asyncio

    asyncio.run(_on_maintenance_db(admin_base, f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_on_maintenance_db(admin_base, f'CREATE DATABASE "{name}"'))


def _drop_database(admin_base: str, name: str) -> None:
    import asyncio

    asyncio.run(_on_maintenance_db(admin_base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _claim_redis_db() -> int:
    """A Redis database number no other test run on this machine holds: every test flushes
    its database, so two runs at once (a developer's and CI's) must not share one."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    for number in range(1, 16):
        # Held for an hour at most: a run killed hard frees its number by itself.
        if client.set(f"leadkiln:test-run:{number}", os.getpid(), nx=True, ex=3600):
            atexit.register(client.delete, f"leadkiln:test-run:{number}")
            return number
    return 1


def start_services(db: str, data_dir: Path) -> Services:
    """Redis (a database of its own on the machine's server) and the chosen database."""
    cleanup: list = []
    redis_db = 1 if db == "sqlite" else 2
    from server.embedded import redis_answers

    if redis_answers(6379):
        redis_db = _claim_redis_db()
        redis_url = f"redis://127.0.0.1:6379/{redis_db}"
    else:
        from server.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(data_dir / "redis").start()
        cleanup.append(embedded.stop)
        redis_url = f"{embedded.url.rsplit('/', 1)[0]}/{redis_db}"

    if db == "sqlite":
        database_url = f"sqlite:///{data_dir / 'test.db'}"
    else:
        admin_base = os.environ.get("LEADKILN_TEST_PG")  # a server URL, or "pgserver" to force the wheel
        if admin_base == "pgserver":
            admin_base = _start_pgserver(data_dir, cleanup)
        elif not admin_base:
            if answers("127.0.0.1", 5432):
                admin_base = "postgres://postgres@127.0.0.1:5432"
            else:
                admin_base = _start_local_postgres() or _start_pgserver(data_dir, cleanup)
        name = f"leadkiln_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        _create_database(admin_base, name)
        cleanup.append(lambda: _drop_database(admin_base, name))
        database_url = _url_for(admin_base, name)
    return Services(redis_url=redis_url, database_url=database_url, _cleanup=cleanup)
