"""Test session setup: real Redis and a real database (SQLite or PostgreSQL, chosen by --db)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SERVICES = None
_DATA_DIR: Path | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--db", choices=["sqlite", "postgres"], default="sqlite",
                     help="database the integration tests run on")


def pytest_configure(config: pytest.Config) -> None:
    """Set the environment before any leadkiln module is imported."""
    global _SERVICES, _DATA_DIR
    from tests.services import start_services

    _DATA_DIR = Path(tempfile.mkdtemp(prefix="leadkiln-test-"))
    db = config.getoption("--db")
    _SERVICES = start_services(db, _DATA_DIR)
    os.environ.update(
        DATA_DIR=str(_DATA_DIR / "data"),
        DATABASE_URL=_SERVICES.database_url,
        REDIS_URL=_SERVICES.redis_url,
        PUBLIC_URL="http://testserver.local",
        SECRET_KEY="test-secret-key-not-for-production",
        PICCOLO_CONF="server.piccolo_conf",
        # Page views written at once: tests read them right after the request.
        PAGE_VIEW_FLUSH_MS="0",
    )
    os.environ.pop("SMTP_URL", None)
    from server.cli import run_migrations

    run_migrations()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVICES is not None:
        _SERVICES.stop()
    if _DATA_DIR is not None:
        shutil.rmtree(_DATA_DIR, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    return f"leadkiln: database={os.environ.get('DATABASE_URL')} redis={os.environ.get('REDIS_URL')}"
