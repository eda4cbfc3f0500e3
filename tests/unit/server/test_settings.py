"""server/settings.py: parsing DATABASE_URL, REDIS_URL, SMTP_URL, SECRET_KEY and the whole Settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from server.settings import (
    ConfigError,
    _check_redis_url,
    _parse_database_url,
    _parse_smtp_url,
    _secret_key,
    read_settings,
)

_SETTINGS_VARIABLES = (
    "DATA_DIR",
    "DATABASE_URL",
    "REDIS_URL",
    "SMTP_URL",
    "SECRET_KEY",
    "PUBLIC_URL",
    "MAIL_FROM",
    "DB_POOL_SIZE",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with no leadkiln settings but DATA_DIR, which points at a fresh folder."""
    for name in _SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    return data_dir


# DATABASE_URL


def test_sqlite_relative_path_resolves_against_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    config = _parse_database_url("sqlite:///relative.db", tmp_path / "data")
    assert config.engine == "sqlite"
    assert config.path == Path.cwd() / "relative.db"
    assert config.path.is_absolute()


def test_sqlite_four_slashes_is_an_absolute_path(tmp_path: Path) -> None:
    config = _parse_database_url("sqlite:////abs/path.db", tmp_path)
    assert config.engine == "sqlite"
    assert config.path == Path("/abs/path.db")


def test_postgres_url_is_parsed_into_its_parts(tmp_path: Path) -> None:
    config = _parse_database_url("postgres://user:pass@host:5433/db", tmp_path)
    assert config.engine == "postgres"
    assert config.host == "host"
    assert config.port == 5433
    assert config.user == "user"
    assert config.password == "pass"
    assert config.database == "db"
    assert config.path is None
    assert config.postgres_config() == {
        "host": "host",
        "port": 5433,
        "user": "user",
        "password": "pass",
        "database": "db",
    }


def test_postgresql_scheme_is_accepted_with_defaults(tmp_path: Path) -> None:
    config = _parse_database_url("postgresql://dbhost/leads", tmp_path)
    assert config.engine == "postgres"
    assert config.host == "dbhost"
    assert config.port == 5432
    assert config.user == "postgres"
    assert config.password is None
    assert config.database == "leads"
    assert "password" not in config.postgres_config()


def test_postgres_credentials_are_unquoted(tmp_path: Path) -> None:
    config = _parse_database_url("postgres://us%40er:p%2Fss%3Aw@host/db", tmp_path)
    assert config.user == "us@er"
    assert config.password == "p/ss:w"


def test_postgres_unix_socket_directory_from_the_host_query(tmp_path: Path) -> None:
    config = _parse_database_url("postgresql://postgres@/leads?host=/run/postgresql", tmp_path)
    assert config.host == "/run/postgresql"
    assert config.database == "leads"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user@host/db",  # bad scheme
        "postgres://user@/db?host=relative/dir",  # a socket directory must be absolute
        "relative.db",  # no scheme at all
        "postgres://user@host:5433/",  # no database name
        "postgres://user@host:5433",  # no database name, no slash
        "postgres://user@host/db/extra",  # a path, not a database name
        "postgres://user@host:port/db",  # port is not a number
        "postgres://user@host:99999/db",  # port out of range
        "sqlite://",  # no path
        "sqlite:///",  # empty path
        "sqlite://host/file.db",  # a host where the path should be
    ],
)
def test_bad_database_urls_raise_config_error_naming_the_variable(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _parse_database_url(url, tmp_path)
    assert info.value.variable == "DATABASE_URL"
    assert str(info.value).startswith("DATABASE_URL: ")


def test_bad_scheme_message_says_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported scheme 'mysql'.*sqlite:///.*postgres://"):
        _parse_database_url("mysql://user@host/db", tmp_path)


def test_bad_port_message_says_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid port"):
        _parse_database_url("postgres://user@host:port/db", tmp_path)


# REDIS_URL


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",
        "rediss://:secret@cache.example.com:6380/2",
        "unix:///var/run/redis.sock",
    ],
)
def test_good_redis_urls_are_returned_unchanged(url: str) -> None:
    assert _check_redis_url(url) == url


@pytest.mark.parametrize(
    "url, problem",
    [
        ("http://localhost:6379/0", "unsupported scheme 'http'"),
        ("localhost:6379", "unsupported scheme"),
        ("redis://", "names no host"),
        ("redis://:6379/0", "names no host"),
        ("redis://localhost:6379/cache", "must be a number"),
        ("redis://localhost:port/0", "cannot parse"),
        ("unix://", "names no socket path"),
    ],
)
def test_bad_redis_urls_raise_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _check_redis_url(url)
    assert info.value.variable == "REDIS_URL"
    assert str(info.value).startswith("REDIS_URL: ")
    assert problem in str(info.value)


# SMTP_URL


def test_smtp_url_with_port() -> None:
    config = _parse_smtp_url("smtp://relay.example.com:2525")
    assert config.host == "relay.example.com"
    assert config.port == 2525
    assert config.use_tls is False
    assert config.start_tls is None, "upgraded with STARTTLS whenever the relay offers it"
    assert config.username is None
    assert config.password is None


def test_smtp_default_port_is_25() -> None:
    assert _parse_smtp_url("smtp://relay.example.com").port == 25


def test_smtps_defaults_to_port_465_with_implicit_tls() -> None:
    config = _parse_smtp_url("smtps://relay.example.com")
    assert config.port == 465
    assert config.use_tls is True
    assert config.start_tls is None


def test_smtp_user_and_password_are_unquoted() -> None:
    config = _parse_smtp_url("smtp://mailer%40example.com:p%40ss%3Aword@relay.example.com:587")
    assert config.username == "mailer@example.com"
    assert config.password == "p@ss:word"
    assert config.port == 587


@pytest.mark.parametrize("query", ["starttls=1", "starttls=true"])
def test_smtp_starttls_query_turns_starttls_on(query: str) -> None:
    config = _parse_smtp_url(f"smtp://relay.example.com:587?{query}")
    assert config.start_tls is True
    assert config.use_tls is False


@pytest.mark.parametrize("query", ["starttls=0", "starttls=false"])
def test_smtp_starttls_can_be_turned_off_for_a_trusted_relay(query: str) -> None:
    assert _parse_smtp_url(f"smtp://relay.internal:25?{query}").start_tls is False


def test_passwords_never_appear_in_url_errors() -> None:
    with pytest.raises(ConfigError) as info:
        _parse_smtp_url("smtp://mailer:hunter2secret@relay.example.com:587?starttls=maybe")
    assert "hunter2secret" not in str(info.value)
    assert "starttls must be 1 or 0" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _parse_database_url("postgres://app:hunter2secret@db:5432/", Path("/tmp"))
    assert "hunter2secret" not in str(info.value) and "***" in str(info.value)


@pytest.mark.parametrize(
    "url, problem",
    [
        ("http://relay.example.com", "unsupported scheme 'http'"),
        ("relay.example.com:25", "unsupported scheme"),
        ("smtp://", "names no host"),
        ("smtp://:25", "names no host"),
        ("smtp://relay.example.com:port", "cannot parse"),
    ],
)
def test_bad_smtp_urls_raise_config_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse_smtp_url(url)
    assert info.value.variable == "SMTP_URL"
    assert str(info.value).startswith("SMTP_URL: ")
    assert problem in str(info.value)


# SECRET_KEY


def test_secret_key_is_generated_once_with_private_file_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    data_dir = tmp_path / "not-yet-created"
    first = _secret_key(data_dir)
    key_file = data_dir / "secret_key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text() == first
    assert len(first) >= 32
    assert _secret_key(data_dir) == first


def test_processes_starting_at_once_agree_on_one_complete_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.delenv("SECRET_KEY", raising=False)
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: _secret_key(tmp_path), range(32)))
    assert len(keys) == 1 and len(keys.pop()) >= 32
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"], "no temporary files left behind"


def test_an_empty_key_file_is_a_clear_error_not_an_empty_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    (tmp_path / "secret_key").write_text("")
    with pytest.raises(ConfigError, match="holds no usable key"):
        _secret_key(tmp_path)


def test_generated_keys_differ_between_data_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    assert _secret_key(tmp_path / "one") != _secret_key(tmp_path / "two")


def test_blank_secret_key_env_falls_back_to_the_generated_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SECRET_KEY", "   ")
    key = _secret_key(tmp_path)
    assert key == (tmp_path / "secret_key").read_text()


def test_secret_key_from_env_is_used_and_no_file_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SECRET_KEY", "  a-long-enough-secret-key  ")
    assert _secret_key(tmp_path) == "a-long-enough-secret-key"
    assert not (tmp_path / "secret_key").exists()


def test_short_secret_key_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SECRET_KEY", "fifteen-chars-x")
    with pytest.raises(ConfigError, match="at least 16 characters") as info:
        _secret_key(tmp_path)
    assert info.value.variable == "SECRET_KEY"


# read_settings


def test_read_settings_defaults(clean_env: Path) -> None:
    settings = read_settings()
    data_dir = clean_env.resolve()
    assert settings.data_dir == data_dir
    assert settings.database.engine == "sqlite"
    assert settings.database.path == data_dir / "leadkiln.db"
    assert settings.database_url == f"sqlite:///{data_dir / 'leadkiln.db'}"
    assert settings.redis_url is None
    assert settings.smtp_url is None
    assert settings.smtp is None
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.mail_from == "leadkiln <hello@leadkiln.localhost>"
    assert settings.db_pool_size == 10
    assert settings.secret_key == (data_dir / "secret_key").read_text()


def test_read_settings_uses_the_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://app:pw@db.internal:5433/leads")
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6379/1")
    monkeypatch.setenv("SMTP_URL", "smtps://relay.example.com")
    monkeypatch.setenv("SECRET_KEY", "a-long-enough-secret-key")
    monkeypatch.setenv("MAIL_FROM", "Acme <news@acme.example>")
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    settings = read_settings()
    assert settings.database.engine == "postgres"
    assert settings.database.host == "db.internal"
    assert settings.redis_url == "redis://cache.internal:6379/1"
    assert settings.smtp is not None
    assert settings.smtp.port == 465
    assert settings.secret_key == "a-long-enough-secret-key"
    assert settings.mail_from == "Acme <news@acme.example>"
    assert settings.db_pool_size == 4


def test_public_url_trailing_slash_is_stripped(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLIC_URL", "https://leads.example.com/")
    settings = read_settings()
    assert settings.public_url == "https://leads.example.com"
    assert settings.mail_domain == "leads.example.com"


@pytest.mark.parametrize("public_url", ["leads.example.com", "ftp://leads.example.com"])
def test_invalid_public_url_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch, public_url: str) -> None:
    monkeypatch.setenv("PUBLIC_URL", public_url)
    with pytest.raises(ConfigError, match="http:// or https://") as info:
        read_settings()
    assert info.value.variable == "PUBLIC_URL"


@pytest.mark.parametrize("pool", ["0", "-1", "ten"])
def test_invalid_pool_size_is_refused(clean_env: Path, monkeypatch: pytest.MonkeyPatch, pool: str) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", pool)
    with pytest.raises(ConfigError) as info:
        read_settings()
    assert info.value.variable == "DB_POOL_SIZE"


def test_read_settings_reports_a_bad_redis_url(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "memcached://localhost")
    with pytest.raises(ConfigError) as info:
        read_settings()
    assert info.value.variable == "REDIS_URL"
