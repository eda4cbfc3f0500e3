"""Settings: one dataclass read from the environment (and a `.env` file), cached."""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class ConfigError(Exception):
    """A setting that cannot be used; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class DatabaseConfig:
    """Where the tables live, parsed from DATABASE_URL."""

    engine: str
    """`sqlite` or `postgres`."""
    path: Path | None = None
    """The SQLite file (sqlite only)."""
    host: str = "127.0.0.1"
    """A host name, or a directory holding the server's Unix socket (`?host=/run/postgresql`)."""
    port: int = 5432
    user: str = "postgres"
    password: str | None = None
    database: str = "leadkiln"

    def postgres_config(self) -> dict[str, object]:
        """Keyword arguments for asyncpg / Piccolo's PostgresEngine."""
        config: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "database": self.database,
        }
        if self.password:
            config["password"] = self.password
        return config


@dataclass(frozen=True)
class SmtpConfig:
    """The relay letters go through, parsed from SMTP_URL."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    """Implicit TLS (`smtps://`)."""
    start_tls: bool | None = None
    """STARTTLS: None upgrades when the relay offers it, True requires it (`?starttls=1`),
    False never (`?starttls=0`, a relay on a trusted network without TLS)."""


@dataclass(frozen=True)
class RateLimit:
    """At most `count` hits per `seconds` (a fixed window shared through Redis)."""

    count: int
    seconds: int

    @classmethod
    def parse(cls, variable: str, value: str) -> "RateLimit":
        count, _, seconds = value.partition("/")
        if not (count.strip().isdigit() and seconds.strip().isdigit() and int(seconds) > 0):
            raise ConfigError(variable, f"{value!r} is not COUNT/SECONDS, e.g. 20/60")
        return cls(int(count), int(seconds))


@dataclass(frozen=True)
class Settings:
    """Everything leadkiln reads from its environment."""

    data_dir: Path
    """DATA_DIR: the SQLite file, generated secret key, models, rendered ebooks, caught mail."""
    database_url: str
    """DATABASE_URL: `sqlite:///relative.db`, `sqlite:////abs.db` or `postgres://user@host:port/db`."""
    database: DatabaseConfig
    """DATABASE_URL, parsed."""
    redis_url: str | None
    """REDIS_URL: unset means an embedded Redis that leadkiln starts and stops."""
    smtp_url: str | None
    """SMTP_URL: unset means the built-in mail catcher (demo) on `catcher_port`."""
    smtp: SmtpConfig | None
    """SMTP_URL, parsed."""
    secret_key: str
    """SECRET_KEY: signs links and sessions; unset means one generated into DATA_DIR."""
    public_url: str
    """PUBLIC_URL: the address visitors and letters use to reach this server."""
    mail_from: str = "leadkiln <hello@leadkiln.localhost>"
    """MAIL_FROM: default sender for letters when a chain names none."""
    db_pool_size: int = 10
    """DB_POOL_SIZE: PostgreSQL connections per process."""
    capture_limit_ip: "RateLimit" = None  # type: ignore[assignment]
    """CAPTURE_LIMIT_IP: form submissions one IP address may make, `COUNT/SECONDS` (default 20/60)."""
    capture_limit_email: "RateLimit" = None  # type: ignore[assignment]
    """CAPTURE_LIMIT_EMAIL: submissions naming one address, `COUNT/SECONDS` (default 5/3600)."""
    api_limit_key: "RateLimit" = None  # type: ignore[assignment]
    """API_LIMIT_KEY: events one API key may send, `COUNT/SECONDS` (default 600/60)."""
    trusted_proxies: frozenset[str] = frozenset()
    """TRUSTED_PROXIES: addresses of reverse proxies whose X-Forwarded-For names the visitor."""
    page_view_flush_ms: int = 200
    """PAGE_VIEW_FLUSH_MS: page views are written in batches this often; 0 writes each at once."""
    send_rate: "RateLimit | None" = None
    """SEND_RATE: letters the relay takes, `COUNT/SECONDS`, shared by every worker process
    (a sliding window in Redis: never more than COUNT in any SECONDS). Unset: no limit."""
    smtp_connections: int = 4
    """SMTP_CONNECTIONS: reused connections to the relay per worker process (letters in flight)."""
    frequency_cap: "RateLimit | None" = None
    """FREQUENCY_CAP: chain letters one lead may get, `COUNT/SECONDS` across all chains (e.g.
    1/86400); a letter over the cap waits, it is never dropped. Unset: no cap."""
    send_stuck_after: int = 600
    """SEND_STUCK_AFTER: seconds after which a letter still marked in flight belongs to a dead
    worker (`sending` becomes `unknown`, `claimed` is retried)."""
    dkim_domain: str = ""
    """DKIM_DOMAIN: sign letters for this domain (with DKIM_SELECTOR and DKIM_KEY_FILE)."""
    dkim_selector: str = ""
    """DKIM_SELECTOR: the DNS selector whose TXT record holds the public key."""
    dkim_key_file: str = ""
    """DKIM_KEY_FILE: the PEM private key that signs."""
    sales_alert_to: str = ""
    """SALES_ALERT_TO: the address (a sales list) told when a lead with no owner turns hot; unset: only owners are told."""
    bounce_rate_warn: float = 0.05
    """BOUNCE_RATE_WARN: the content dashboard warns when a chain's (or all chains') letters of the
    last 30 days bounced at this rate or more, a fraction (default 0.05, i.e. 5%)."""
    complaint_rate_warn: float = 0.003
    """COMPLAINT_RATE_WARN: the content dashboard warns when spam complaints over the last 30 days
    reach this rate of delivered letters, a fraction (default 0.003: the 0.3% big mailbox providers
    hold senders to)."""

    report_to: tuple[str, ...] = ()
    """REPORT_TO: comma-separated addresses for the weekly sales report; unset: every active admin and sales user."""
    report_at: tuple[int, int, int] = (0, 7, 0)
    """REPORT_AT: when the weekly report goes out, weekday and time, e.g. "mon 07:00" (the default)."""
    report_timezone: str = "UTC"
    """REPORT_TIMEZONE: the IANA zone REPORT_AT is read in, e.g. Europe/Berlin (default UTC)."""

    def __post_init__(self) -> None:
        defaults = {"capture_limit_ip": RateLimit(20, 60), "capture_limit_email": RateLimit(5, 3600),
                    "api_limit_key": RateLimit(600, 60)}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @property
    def mail_domain(self) -> str:
        """Domain used in Message-IDs: the public host."""
        return urlsplit(self.public_url).hostname or "leadkiln.localhost"


def _parse_database_url(url: str, data_dir: Path) -> DatabaseConfig:
    """Parse DATABASE_URL into a DatabaseConfig or raise ConfigError."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError("DATABASE_URL", f"cannot parse {redact(url)!r} ({exc})") from None
    if parts.scheme == "sqlite":
        # sqlite:///relative.db -> path "/relative.db"; sqlite:////abs.db -> "//abs.db"
        raw = url[len("sqlite://") :]
        if parts.netloc or not raw.startswith("/") or raw == "/":
            raise ConfigError(
                "DATABASE_URL",
                f"{redact(url)!r} is not sqlite:///relative.db or sqlite:////absolute/path.db",
            )
        path = Path(raw[1:])
        if not path.is_absolute():
            path = Path.cwd() / path
        return DatabaseConfig(engine="sqlite", path=path)
    if parts.scheme in ("postgres", "postgresql"):
        try:
            port = parts.port or 5432
        except ValueError:
            raise ConfigError("DATABASE_URL", f"{redact(url)!r} has an invalid port") from None
        database = parts.path.lstrip("/")
        if not database or "/" in database:
            raise ConfigError("DATABASE_URL", f"{redact(url)!r} names no database (postgres://user@host:port/db)")
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        if socket_dir and not socket_dir.startswith("/"):
            raise ConfigError("DATABASE_URL", f"{redact(url)!r}: ?host= must be a socket directory (an absolute path)")
        return DatabaseConfig(
            engine="postgres",
            host=socket_dir or parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username) if parts.username else "postgres",
            password=unquote(parts.password) if parts.password else None,
            database=database,
        )
    raise ConfigError(
        "DATABASE_URL", f"unsupported scheme {parts.scheme or '(none)'!r}: use sqlite:/// or postgres://"
    )


def _check_redis_url(url: str) -> str:
    """Check REDIS_URL's shape (scheme, port, db) or raise ConfigError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("REDIS_URL", f"cannot parse {redact(url)!r}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("REDIS_URL", f"unsupported scheme {parts.scheme or '(none)'!r}: use redis://host:port/db")
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("REDIS_URL", f"{redact(url)!r} names no socket path")
        return url
    if not parts.hostname:
        raise ConfigError("REDIS_URL", f"{redact(url)!r} names no host")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ConfigError("REDIS_URL", f"{redact(url)!r}: the database must be a number")
    del port
    return url


def _parse_smtp_url(url: str) -> SmtpConfig:
    """Parse SMTP_URL (`smtp://user:pass@host:port`, `smtps://…`) or raise ConfigError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError("SMTP_URL", f"cannot parse {redact(url)!r}") from None
    if parts.scheme not in ("smtp", "smtps"):
        raise ConfigError("SMTP_URL", f"unsupported scheme {parts.scheme or '(none)'!r}: use smtp:// or smtps://")
    if not parts.hostname:
        raise ConfigError("SMTP_URL", f"{redact(url)!r} names no host")
    implicit = parts.scheme == "smtps"
    return SmtpConfig(
        host=parts.hostname,
        port=port or (465 if implicit else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=implicit,
        start_tls=None if implicit else _starttls_choice(url, parts.query),
    )


def _starttls_choice(url: str, query: str) -> bool | None:
    values = parse_qs(query).get("starttls")
    if not values:
        return None
    value = values[-1].lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ConfigError("SMTP_URL", f"{redact(url)!r}: starttls must be 1 or 0, not {value!r}")


def redact(url: str) -> str:
    """The URL with its password replaced, fit to print in a log or an error."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _secret_key(data_dir: Path) -> str:
    """Read SECRET_KEY, or the key generated into DATA_DIR on first use."""
    key = os.environ.get("SECRET_KEY", "").strip()
    if key:
        if len(key) < 16:
            raise ConfigError("SECRET_KEY", "must be at least 16 characters")
        return key
    key_file = data_dir / "secret_key"
    if not key_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole to a private temporary file, then linked into place: a process
        # starting at the same moment sees either no key or the complete one, and the
        # first link wins, so every process agrees on one key.
        fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=".secret_key.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            try:
                os.link(temporary, key_file)
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary)
    key = key_file.read_text().strip()
    if len(key) < 16:
        raise ConfigError("SECRET_KEY", f"{key_file} holds no usable key: delete it to generate a new one")
    return key


def _fraction(variable: str, value: str) -> float:
    """A rate between 0 and 1 written as a fraction (0.05), or a percentage (5%)."""
    text = value.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(variable, f"{value!r} is not a rate such as 0.05 or 5%") from None
    if not 0 < number <= 1:
        raise ConfigError(variable, f"{value!r} must be above 0 and at most 1 (100%)")
    return number


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _report_settings() -> dict[str, object]:
    """REPORT_TO, REPORT_AT and REPORT_TIMEZONE, checked."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    to = tuple(a.strip() for a in os.environ.get("REPORT_TO", "").split(",") if a.strip())
    for address in to:
        if address.count("@") != 1 or any(ch.isspace() or ch in ";<>" for ch in address):
            raise ConfigError("REPORT_TO", f"{address!r} is not an email address (separate several with commas)")
    at = (os.environ.get("REPORT_AT") or "mon 07:00").strip().lower()
    day, _, clock = at.partition(" ")
    hour, _, minute = clock.strip().partition(":")
    if day[:3] not in WEEKDAYS or not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
        raise ConfigError("REPORT_AT", f"{at!r} is not a weekday and a time, e.g. mon 07:00")
    zone = (os.environ.get("REPORT_TIMEZONE") or "UTC").strip()
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("REPORT_TIMEZONE", f"{zone!r} is not an IANA time zone, e.g. Europe/Berlin") from None
    return {"report_to": to, "report_at": (WEEKDAYS.index(day[:3]), int(hour), int(minute)), "report_timezone": zone}


def load_dotenv_file() -> None:
    """Load `.env` from the working directory without overriding real variables."""
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)


def read_settings() -> Settings:
    """Build Settings from the environment, raising ConfigError on a bad value."""
    data_dir = Path(os.environ.get("DATA_DIR") or Path.cwd() / "leadkiln-data").expanduser().resolve()
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{data_dir / 'leadkiln.db'}"
    database = _parse_database_url(database_url, data_dir)
    redis_url = os.environ.get("REDIS_URL") or None
    if redis_url:
        _check_redis_url(redis_url)
    smtp_url = os.environ.get("SMTP_URL") or None
    smtp = _parse_smtp_url(smtp_url) if smtp_url else None
    public_url = (os.environ.get("PUBLIC_URL") or "http://127.0.0.1:8000").rstrip("/")
    if urlsplit(public_url).scheme not in ("http", "https"):
        raise ConfigError("PUBLIC_URL", f"{public_url!r} must start with http:// or https://")
    pool = os.environ.get("DB_POOL_SIZE", "10")
    if not pool.isdigit() or int(pool) < 1:
        raise ConfigError("DB_POOL_SIZE", f"{pool!r} is not a positive whole number")
    flush = os.environ.get("PAGE_VIEW_FLUSH_MS", "200")
    if not flush.isdigit():
        raise ConfigError("PAGE_VIEW_FLUSH_MS", f"{flush!r} is not a whole number of milliseconds")
    limits = {
        name: RateLimit.parse(variable, os.environ[variable])
        for name, variable in (("capture_limit_ip", "CAPTURE_LIMIT_IP"), ("capture_limit_email", "CAPTURE_LIMIT_EMAIL"),
                               ("api_limit_key", "API_LIMIT_KEY"), ("send_rate", "SEND_RATE"),
                               ("frequency_cap", "FREQUENCY_CAP"))
        if os.environ.get(variable)
    }
    numbers = {}
    for name, variable, default, least in (("smtp_connections", "SMTP_CONNECTIONS", "4", 1),
                                           ("send_stuck_after", "SEND_STUCK_AFTER", "600", 1)):
        value = os.environ.get(variable) or default
        if not value.isdigit() or int(value) < least:
            raise ConfigError(variable, f"{value!r} is not a whole number of at least {least}")
        numbers[name] = int(value)
    dkim = {name: os.environ.get(variable, "").strip()
            for name, variable in (("dkim_domain", "DKIM_DOMAIN"), ("dkim_selector", "DKIM_SELECTOR"),
                                   ("dkim_key_file", "DKIM_KEY_FILE"))}
    if any(dkim.values()) and not all(dkim.values()):
        raise ConfigError("DKIM_KEY_FILE", "DKIM signing needs DKIM_DOMAIN, DKIM_SELECTOR and DKIM_KEY_FILE together")
    if dkim["dkim_key_file"] and not Path(dkim["dkim_key_file"]).expanduser().is_file():
        raise ConfigError("DKIM_KEY_FILE", f"{dkim['dkim_key_file']!r} is not a readable file")
    sales_alert_to = os.environ.get("SALES_ALERT_TO", "").strip()
    if sales_alert_to and (sales_alert_to.count("@") != 1 or any(ch.isspace() or ch in ",;<>" for ch in sales_alert_to)):
        raise ConfigError("SALES_ALERT_TO", f"{sales_alert_to!r} is not one email address, e.g. sales@example.com")
    warn_rates = {name: _fraction(variable, os.environ.get(variable) or default)
                  for name, variable, default in (("bounce_rate_warn", "BOUNCE_RATE_WARN", "0.05"),
                                                  ("complaint_rate_warn", "COMPLAINT_RATE_WARN", "0.003"))}
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        database=database,
        redis_url=redis_url,
        smtp_url=smtp_url,
        smtp=smtp,
        secret_key=_secret_key(data_dir),
        public_url=public_url,
        mail_from=os.environ.get("MAIL_FROM") or "leadkiln <hello@leadkiln.localhost>",
        db_pool_size=int(pool),
        trusted_proxies=frozenset(p.strip() for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p.strip()),
        page_view_flush_ms=int(flush),
        **limits,
        **numbers,
        **dkim,
        sales_alert_to=sales_alert_to,
        **warn_rates,
        **_report_settings(),  # type: ignore[arg-type]
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (after `.env`, so `arq` or an ASGI server started
    directly sees the same configuration as the `leadkiln` command)."""
    load_dotenv_file()
    return read_settings()
