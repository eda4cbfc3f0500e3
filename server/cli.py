"""The `leadkiln` command: demo, serve, worker, migrate, createadmin."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

import click

import server  # noqa: F401 - sets PICCOLO_CONF
from server.settings import ConfigError, Settings, get_settings, load_dotenv_file, redact

log = logging.getLogger("leadkiln")


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and a non-zero exit: no traceback for a user's mistake."""
    click.echo(f"leadkiln: {message}", err=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    get_settings.cache_clear()
    try:
        return get_settings()
    except ConfigError as exc:
        fail(str(exc), 2)


def check_port(host: str, port: int) -> None:
    from server.embedded import port_in_use

    if port_in_use(host, port):
        fail(f"port {port} on {host} is already in use; choose another with --port")


def check_database(settings: Settings) -> None:
    """Fail with one line naming DATABASE_URL if the database cannot be reached."""
    if settings.database.engine != "postgres":
        return
    import asyncpg

    async def probe() -> None:
        connection = await asyncpg.connect(**settings.database.postgres_config(), timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001 - any failure is reported in one line
        fail(f"DATABASE_URL: cannot connect to {redact(settings.database_url)} ({type(exc).__name__}: {exc})")


def check_redis(url: str) -> None:
    """Fail with one line naming REDIS_URL if Redis cannot be reached."""
    from redis.asyncio import Redis

    async def probe() -> None:
        client = Redis.from_url(url, socket_connect_timeout=3)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001
        fail(f"REDIS_URL: cannot connect to {redact(url)} ({type(exc).__name__}: {exc})")


def run_migrations(verbose: bool = False) -> None:
    """Apply every app's pending migrations (Piccolo's own output shown only on failure or -v)."""
    from piccolo.apps.migrations.commands.forwards import run_forwards

    output = io.StringIO()
    error = ""
    with contextlib.redirect_stdout(output):
        try:
            result = asyncio.run(run_forwards(app_name="all"))
        except Exception as exc:  # noqa: BLE001
            result = None
            error = f"{type(exc).__name__}: {exc}"
    if verbose:
        click.echo(output.getvalue())
    if result is None or not result.success:
        click.echo(output.getvalue(), err=True)
        fail(f"migrations failed: {error if result is None else result.message}")


def ensure_admin(username: str, password: str | None, email: str, role: str = "admin") -> str:
    """Create (or reset) a staff user with a role (an admin by default); returns the password in force."""
    from piccolo.apps.user.tables import BaseUser

    from admin.forms.staff import set_role
    from admin.tables import Role

    password = password or secrets.token_urlsafe(12)

    async def upsert() -> None:
        user = await BaseUser.objects().where(BaseUser.username == username).first()
        if user is None:
            user = await BaseUser.create_user(username=username, password=password, email=email,
                                              active=True, admin=True, superuser=role == "admin")
        else:
            await BaseUser.update_password(user=user.id, password=password)
            await BaseUser.update({BaseUser.active: True, BaseUser.admin: True}).where(BaseUser.id == user.id)
        await set_role(user.id, Role(role))

    asyncio.run(upsert())
    return password


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """leadkiln: gated ebooks, per-topic interest scoring and nurture chains, on one machine."""
    load_dotenv_file()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # The catcher's per-command SMTP chatter and the 5-second sweep drown what matters.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        logging.getLogger("piccolo.engine.base").setLevel(logging.WARNING)
        logging.getLogger("arq.worker").addFilter(lambda record: "cron:sweep" not in record.getMessage())


@main.command()
@click.option("-v", "--verbose", is_flag=True, help="Show each migration.")
def migrate(verbose: bool) -> None:
    """Create or update the tables (SQLite or PostgreSQL, from DATABASE_URL)."""
    settings = settings_or_exit()
    check_database(settings)
    run_migrations(verbose)
    click.echo(f"database is up to date ({settings.database.engine})")


@main.command()
@click.option("--username", prompt=True, help="Login name.")
@click.option("--email", prompt=True, help="The user's email address.")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Password (prompted if not given).")
def createadmin(username: str, email: str, password: str) -> None:
    """Create an admin user for /admin/ (or reset its password)."""
    settings = settings_or_exit()
    check_database(settings)
    if len(password) < 8:
        fail("the password needs at least 8 characters", 2)
    ensure_admin(username, password, email)
    click.echo(f"admin user {username!r} is ready")


def _embedded_redis_if_needed(settings: Settings) -> Any:
    """Start an embedded Redis when REDIS_URL is unset; the caller stops it."""
    if settings.redis_url:
        check_redis(settings.redis_url)
        return None
    from server.embedded import EmbeddedRedis

    url, redis = EmbeddedRedis.reuse_or_start(settings.data_dir)
    os.environ["REDIS_URL"] = url
    get_settings.cache_clear()
    click.echo(f"no REDIS_URL: using the embedded Redis at {url}" + ("" if redis else " (started by another leadkiln process)"))
    return redis


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Web processes.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log every request (off when a proxy in front logs them).")
def serve(host: str, port: int, workers: int, access_log: bool) -> None:
    """Run the web app (landing pages, API, admin)."""
    settings = settings_or_exit()
    check_port(host, port)
    check_database(settings)
    redis = _embedded_redis_if_needed(settings)
    import uvicorn

    try:
        uvicorn.run("server.asgi:app", host=host, port=port, workers=workers, log_level="info",
                    proxy_headers=True, server_header=False, access_log=access_log)
    finally:
        if redis is not None:
            redis.stop()


@main.command()
@click.option("--burst", is_flag=True, help="Run the jobs that are due, then exit.")
def worker(burst: bool) -> None:
    """Run the background worker (sends letters, rescores leads, sweeps for due steps)."""
    settings = settings_or_exit()
    check_database(settings)
    redis = _embedded_redis_if_needed(settings)
    catcher = None
    if settings.smtp_url is None:
        from server.embedded import MailCatcher

        catcher = MailCatcher(settings.data_dir).start()
        os.environ["SMTP_URL"] = catcher.url
        get_settings.cache_clear()
        click.echo(f"no SMTP_URL: letters go to the built-in mail catcher ({catcher.url})")
    from arq.worker import run_worker

    from workers.settings import WorkerSettings, redis_settings

    try:
        run_worker(WorkerSettings, redis_settings=redis_settings(), burst=burst)  # type: ignore[arg-type]
    finally:
        if catcher is not None:
            catcher.stop()
        if redis is not None:
            redis.stop()


class DemoLock:
    """One demo per data directory: an exclusive lock held for the demo's life."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "demo.lock"
        self.handle = open(self.path, "a+")

    def acquire(self) -> bool:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return True

    def holder(self) -> str:
        self.handle.seek(0)
        return self.handle.read().strip() or "?"


def _wait_healthy(url: str, children: list[subprocess.Popen[bytes]], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _stop_children(children: list[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=5)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the SQLite file, secret key, rendered ebooks and caught mail live (default: DATA_DIR or ./leadkiln-data).")
@click.option("--delay-minutes", default=1, show_default=True, type=click.IntRange(0, 1440),
              help="Delay between the demo chains' letters.")
def demo(host: str, port: int, data_dir: Path | None, delay_minutes: int) -> None:
    """Everything in one process tree on embedded defaults, with demo data. Ctrl-C stops it all."""
    if data_dir is not None:
        os.environ["DATA_DIR"] = str(data_dir.expanduser().resolve())
    settings = settings_or_exit()
    lock = DemoLock(settings.data_dir)
    if not lock.acquire():
        fail(f"a leadkiln demo is already running on {settings.data_dir} (pid {lock.holder()}); stop it first")
    check_port(host, port)
    public_url = os.environ.get("PUBLIC_URL") or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    os.environ["PUBLIC_URL"] = public_url
    settings = settings_or_exit()
    check_database(settings)

    from server.embedded import EmbeddedRedis, MailCatcher
    from server.demo_data import seed_demo

    redis = catcher = None
    children: list[subprocess.Popen[bytes]] = []
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_migrations()
        passwords = {}
        for role in ("admin", "sales", "content"):
            password_file = settings.data_dir / f"{role}-password"
            known = password_file.read_text().strip() if password_file.exists() else None
            passwords[role] = ensure_admin(role, known, f"{role}@leadkiln.localhost", role)
            write_private(password_file, passwords[role])
        # After the users: the demo's history names the sales user as owner of the leads it worked.
        asyncio.run(seed_demo(delay_minutes=delay_minutes))
        if not settings.redis_url:
            redis = EmbeddedRedis(settings.data_dir).start()
            os.environ["REDIS_URL"] = redis.url
        if not settings.smtp_url:
            catcher = MailCatcher(settings.data_dir)
            os.environ["SMTP_URL"] = catcher.url
        env = dict(os.environ)
        python = sys.executable
        from server.embedded import _die_with_parent

        # The children are forked before the catcher's thread starts: preexec_fn in a
        # process that runs threads can deadlock. The worker connects on its first letter.
        children.append(subprocess.Popen([python, "-m", "server.cli", "serve", "--host", host, "--port", str(port)],
                                         env=env, preexec_fn=_die_with_parent))
        children.append(subprocess.Popen([python, "-m", "server.cli", "worker"], env=env, preexec_fn=_die_with_parent))
        if catcher is not None:
            catcher.start()
        if not _wait_healthy(f"http://127.0.0.1:{port}/health" if host in ("0.0.0.0", "::") else f"http://{host}:{port}/health", children):
            fail("the web app did not become healthy; see the messages above")
        pages = asyncio.run(_landing_slugs())
        lines = ["", "leadkiln demo is running. Ctrl-C stops everything.", ""]
        lines += [f"  landing page  {public_url}/l/{slug}" for slug in pages]
        lines += [
            f"  desk          {public_url}/desk/    sales: sales / {passwords['sales']}   content: content / {passwords['content']}",
            f"  admin         {public_url}/admin/   login: admin / {passwords['admin']}",
            f"  caught mail   admin > Mail > Caught mail, and {settings.data_dir / 'mail'}",
            f"  data dir      {settings.data_dir}",
            "",
        ]
        click.echo("\n".join(lines))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        fail("a demo process stopped unexpectedly; shutting down")
    except _Stop:
        click.echo("\nstopping leadkiln demo…")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN)
        _stop_children(children)
        if catcher is not None:
            catcher.stop()
        if redis is not None:
            redis.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_with_database(work: Any) -> Any:
    """Run `work()` (a coroutine function) with a connection pool when on PostgreSQL."""
    from piccolo.engine import engine_finder
    from piccolo.engine.postgres import PostgresEngine

    async def wrapped() -> Any:
        engine = engine_finder()
        pooled = isinstance(engine, PostgresEngine)
        if pooled:
            await engine.start_connection_pool(min_size=1, max_size=4)
        try:
            return await work()
        finally:
            if pooled:
                await engine.close_connection_pool()

    return asyncio.run(wrapped())


def _ready_database() -> Settings:
    settings = settings_or_exit()
    check_database(settings)
    run_migrations()
    return settings


@main.command("import-leads")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--outcome", required=True, help="The column that holds the outcome (converted, won …).")
@click.option("--positive", default=None, help="The outcome value that means success (needed unless the column is yes/no-like).")
@click.option("--email", "email_column", default=None, help="The column with the lead's email address.")
@click.option("--id", "id_column", default=None, help="The column with the lead's id in the CRM (re-imports update).")
@click.option("--exclude", multiple=True, help="A column filled in after the outcome (it leaks it): never stored. Repeatable.")
@click.option("--topic", default=None, help="The topic these leads were interested in (created if new).")
def import_leads(file: Path, outcome: str, positive: str | None, email_column: str | None, id_column: str | None,
                 exclude: tuple[str, ...], topic: str | None) -> None:
    """Import a CRM export (CSV) as leads with typed attributes and outcome labels.

    Rows without an email become historical leads: used for training, never mailed.
    """
    if email_column and id_column:
        fail("give --email or --id, not both", code=2)
    _ready_database()
    from scoring.importer import ImportOptions, ImportProblem
    from scoring.service import import_leads as run_import

    options = ImportOptions(file, outcome, positive, email_column, id_column, tuple(exclude), topic)
    try:
        report = run_with_database(lambda: run_import(options))
    except ImportProblem as exc:
        fail(str(exc), code=2)
    click.echo(f"read {report.rows} rows ({report.encoding}, delimiter {report.delimiter!r}): "
               f"{report.created} leads created, {report.updated} updated, {report.historical} historical (no email), "
               f"{report.labelled} with an outcome ({report.positives} positive)")
    for note in report.notes:
        click.echo(f"  note: {note}")
    if report.skipped:
        click.echo(f"{len(report.skipped)} rows skipped:")
        for reason in report.skipped:
            click.echo(f"  {reason}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--label-after-days", default=90, show_default=True, type=click.IntRange(1, 3650),
              help="A lead with no outcome after this many days counts as negative.")
@click.option("--exclude", multiple=True, help="An attribute to leave out of this training. Repeatable.")
def train(as_json: bool, label_after_days: int, exclude: tuple[str, ...]) -> None:
    """Train LightGBM and the logistic baseline; promote the better one if it beats the active model."""
    import json

    _ready_database()
    from scoring.service import train as run_train

    report = run_with_database(lambda: run_train(label_after_days=label_after_days, exclude=tuple(exclude)))
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2, default=str))
    else:
        click.echo(_training_summary(report))
    if not report.trained:
        raise SystemExit(1)


def _training_summary(report: Any) -> str:
    if not report.trained:
        return "\n".join(["no model trained:"] + [f"  {n}" for n in report.notes])
    cv = report.metrics["cv"]
    lines = [f"model {report.version}: {report.algorithm}, {report.labels} labelled leads ({report.positives} positive), "
             f"{report.seconds:.1f}s", f"  {report.metrics['cv_scheme']}:"]
    for name in ("lightgbm", "logistic"):
        m = cv[name]
        lines.append(f"    {name:9s} ROC-AUC {m['roc_auc']:.4f}  PR-AUC {m['pr_auc']:.4f}  log loss {m['log_loss']:.4f}  "
                     f"Brier {m['brier']:.4f}  top-decile lift {m['lift_top_decile']}")
    holdout = report.metrics.get("holdout")
    if holdout:
        lines.append(f"  {report.metrics['holdout_scheme']}: " + ", ".join(
            f"{name} ROC-AUC {holdout[name]['roc_auc']:.4f}" for name in ("lightgbm", "logistic")))
    else:
        lines.append(f"  time holdout {report.metrics['holdout_scheme']}")
    lines.append(f"  {'promoted: now scoring with it' if report.promoted else 'not promoted: the active model stays'}")
    lines += [f"  note: {n}" for n in report.notes]
    return "\n".join(lines)


@main.command()
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000), help="Leads shown per topic.")
def score(top: int) -> None:
    """Rescore every lead now and print the top leads per topic with their reasons."""
    _ready_database()
    from scoring.service import rescore_all, top_leads

    async def work() -> tuple[Any, Any]:
        return await rescore_all(), await top_leads(top)

    report, leaders = run_with_database(work)
    click.echo(f"rescored {report.leads} leads ({report.scores} scores, model {report.model_version}) in "
               f"{report.seconds:.1f}s; {report.became_hot} became hot")
    for topic, rows in leaders.items():
        click.echo(f"\n{topic}:")
        for row in rows:
            reasons = "; ".join(f"{f['text']} ({f['effect']:+.1f})" for f in (row["explanation"] or [])[:3])
            flag = "HOT " if row["hot"] else "    "
            click.echo(f"  {flag}{row['combined']:5.1f}  {row['lead.email'] or '#' + str(row['lead.id'])}  {reasons}")


def write_private(path: Path, text: str) -> None:
    """Write a file that only its owner can read, from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


async def _landing_slugs() -> list[str]:
    from content.tables import LandingPage

    rows = await LandingPage.select(LandingPage.slug).where(LandingPage.published == True).order_by(LandingPage.id)  # noqa: E712
    return [r["slug"] for r in rows]


if __name__ == "__main__":
    main()
