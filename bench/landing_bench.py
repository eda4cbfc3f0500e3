"""Landing-page benchmark: GET /l/<slug> beside a bare Litestar page of the same size (the
ceiling, measured in the same run), then form captures on PostgreSQL, every one checked.

    cd /work/main && .venv/bin/python -m bench.landing_bench                    # about a minute
    cd /work/main && .venv/bin/python -m bench.landing_bench --duration 30 --connections 64

It creates a fresh PostgreSQL database and flushes a Redis database, migrates and seeds the
demo content with the `leadkiln` CLI, starts `leadkiln serve --workers W`, and a bare
`Litestar(route_handlers=[page], template_config=...)` under uvicorn with the same options
that renders the real page's HTML (taken once) as a Jinja2 template with one variable. Both
are loaded one after the other by `bench/loadgen.py` (keep-alive connections, warm-up, then a
measured window). Then it POSTs the capture form with a new address each time and looks up
every address that got the success answer in the `lead` table. Nothing is asserted: the
figures are printed beside their goals, with the CPU each process group used meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import html
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (python bench/landing_bench.py) as well as with -m
    sys.path.insert(0, str(ROOT))

from bench.loadgen import (Connection, LoadResult, ProcessBalancer, Response, Scenario, get_request, post_form,  # noqa: E402
                           run_load)

GET_RATIO_GOAL = 0.75
CAPTURE_RATE_GOAL = 800.0
ACCEPTED = (200, 303)
"""A capture's success answer: 303 to the thank-you page (200 with the thank-you page is also taken)."""
EMAIL_DOMAIN = "bench.example.com"
BARE_TEMPLATE_DIR = "LEADKILN_BENCH_BARE_TEMPLATES"
BARE_TOKEN = "LEADKILN_BENCH_BARE_TOKEN"
CSRF_INPUT = re.compile(rb'<input[^>]*name="_csrf_token"[^>]*>')
VALUE = re.compile(rb'value="([^"]*)"')
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SMTP_URL", "DATA_DIR", "PUBLIC_URL", "SECRET_KEY",
                     "CAPTURE_LIMIT_IP", "CAPTURE_LIMIT_EMAIL", "PICCOLO_CONF")


# The ceiling: a bare Litestar app, imported by uvicorn in its worker processes.


def bare_app() -> Any:
    """`uvicorn bench.landing_bench:bare_app --factory`: one templated route, no middleware."""
    from litestar import Litestar, get
    from litestar.plugins.jinja import JinjaTemplateEngine
    from litestar.response import Template
    from litestar.template.config import TemplateConfig

    token = os.environ[BARE_TOKEN]

    @get("/l/{slug:str}")
    async def page(slug: str) -> Template:
        """The landing page's HTML, rendered from a template with one variable."""
        return Template(template_name="page.html", context={"token": token})

    @get("/health")
    async def health() -> str:
        """Up."""
        return "ok"

    return Litestar(route_handlers=[page, health], signature_namespace={"Template": Template},
                    template_config=TemplateConfig(directory=Path(os.environ[BARE_TEMPLATE_DIR]), engine=JinjaTemplateEngine))


def bare_template(page: bytes) -> tuple[str, str]:
    """The page as a Jinja2 template whose one variable is the CSRF token: (template, token).

    Everything else is literal (inside raw blocks), so the output has the page's exact size.
    """
    text = page.decode()
    if "{% endraw %}" in text:
        raise SystemExit("landing_bench: the page contains '{% endraw %}'; cannot turn it into a template")
    field_ = CSRF_INPUT.search(page)
    value = VALUE.search(field_.group(0)) if field_ else None
    token = html.unescape(value.group(1).decode()) if value else ""
    if not token:
        return "{% raw %}" + text + "{% endraw %}{{ token }}", ""
    parts = text.split(value.group(1).decode())
    return "{% raw %}" + "{% endraw %}{{ token }}{% raw %}".join(parts) + "{% endraw %}", value.group(1).decode()


# Scenarios


class PageViews(Scenario):
    """GET /l/<slug> as first visits: no cookies, so every view is a new visitor."""

    def __init__(self, slug: str, host: str) -> None:
        self.raw = get_request(f"/l/{slug}", host)

    def build(self, index: int, seq: int) -> bytes:
        return self.raw


class Captures(Scenario):
    """Form POSTs, a new address and a new visitor each; one GET per connection for its CSRF cookie and token."""

    def __init__(self, slug: str, host: str, run_id: str) -> None:
        self.slug, self.host, self.run_id = slug, host, run_id
        self.sessions: dict[int, tuple[str, str]] = {}
        self.accepted: list[str] = []
        self.refused: Counter = Counter()
        self.odd_location: list[str] = []
        self.refused_sample: dict[int, str] = {}

    async def prepare(self, connection: Connection, index: int) -> None:
        response = await connection.request(get_request(f"/l/{self.slug}", self.host))
        if response.status != 200:
            raise RuntimeError(f"GET /l/{self.slug} answered {response.status} while preparing a capture connection")
        # The CSRF cookie only: without the visitor cookie each capture is a new visitor, as
        # distinct people are (one visitor sending thousands of addresses is no real load).
        cookies = [c.split(b";", 1)[0].decode() for c in response.all(b"set-cookie") if c.startswith(b"lk_csrf=")]
        field_ = CSRF_INPUT.search(response.body)
        value = VALUE.search(field_.group(0)) if field_ else None
        if value is None:
            raise RuntimeError(f"GET /l/{self.slug}: no _csrf_token input in the page")
        self.sessions[index] = ("; ".join(cookies), html.unescape(value.group(1).decode()))

    def email(self, index: int, seq: int) -> str:
        return f"{self.run_id}-{index}-{seq}@{EMAIL_DOMAIN}"

    def build(self, index: int, seq: int) -> bytes:
        cookie, token = self.sessions[index]
        body = (f"email={self.run_id}-{index}-{seq}%40{EMAIL_DOMAIN}&first_name=Ann&consent=on"
                f"&_csrf_token={urllib.request.quote(token, safe='')}").encode()
        return post_form(f"/l/{self.slug}", self.host, body, f"Cookie: {cookie}\r\n" if cookie else "")

    def record(self, index: int, seq: int, response: Response) -> None:
        if response.status in ACCEPTED:
            self.accepted.append(self.email(index, seq))
            location = (response.header(b"location") or b"").decode()
            if response.status == 303 and not location.startswith(f"/l/{self.slug}/thanks"):
                self.odd_location.append(location[:120])
        else:
            self.refused[response.status] += 1
            self.refused_sample.setdefault(response.status, response.body[:300].decode(errors="replace"))

    def report(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "refused": [self.refused], "odd_location": self.odd_location,
                "refused_sample": [self.refused_sample]}


# Processes and CPU


def _die_with_parent() -> None:  # runs in the child before exec
    """Linux: the server gets SIGTERM if this bench dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A web server in its own process group, so it and its workers stop together."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, health: str, timeout: float = 60.0) -> float:
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        url = f"http://127.0.0.1:{self.port}{health}"
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {health} within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def problems_since(self, offset: int) -> list[str]:
        """Log lines after `offset` that report an error or a traceback."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                text = handle.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line or "CRITICAL" in line]

    @property
    def pgid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> float:
        """SIGTERM to the group, SIGKILL to whatever is left after 15 s."""
        if self.process is None:
            return 0.0
        started = time.monotonic()
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        while time.monotonic() < deadline and group_alive(group):
            time.sleep(0.1)
        if group_alive(group):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=5)
        self.process = None
        return time.monotonic() - started


def group_alive(group: int) -> bool:
    """Any non-zombie process left in the group?"""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat and stat[2] == group and stat[1] != "Z":
                return True
    return False


def _proc_stat(pid: int) -> tuple[str, str, int, int, int] | None:
    """(comm, state, pgrp, ppid, utime+stime ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    comm = raw[raw.find("(") + 1:raw.rfind(")")]
    rest = raw[raw.rfind(")") + 2:].split()
    return comm, rest[0], int(rest[2]), int(rest[1]), int(rest[11]) + int(rest[12])


class CpuMeter:
    """CPU used during the measured window, per group: the server under load, the load client,
    PostgreSQL (its background processes and the backends of the bench's database), Redis,
    and everything else on the machine (named, since it skews the figures)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, database: str) -> None:
        self.database = database
        self.snapshots: dict[str, tuple[float, dict[int, tuple[str, int, int, int]], tuple[int, int]]] = {}

    def __call__(self, moment: str) -> None:
        processes = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(int(entry))
                if stat:
                    processes[int(entry)] = (stat[0], stat[2], stat[3], stat[4])
        with open("/proc/stat") as handle:
            numbers = [int(x) for x in handle.readline().split()[1:]]
        idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
        self.snapshots[moment] = (time.monotonic(), processes, (sum(numbers[:8]), idle))

    def _group(self, pid: int, comm: str, group: int, parent: int, server_group: int | None) -> str:
        if group == server_group:
            return "server"
        if pid == os.getpid() or parent == os.getpid():
            return "client"
        if comm.startswith("redis"):
            return "redis"
        if comm.startswith("postgres"):
            command = _cmdline(pid)
            # A backend's title is "postgres: USER DATABASE HOST(PORT) STATE"; another database's is someone else's.
            if re.match(r"postgres: \S+ \S+ \S+\(\d+\)", command) and f" {self.database} " not in command:
                return "other"
            return "postgres"
        return "other"

    def summary(self, server_group: int | None) -> str:
        if "start" not in self.snapshots or "end" not in self.snapshots:
            return "(not measured)"
        t0, before, (total0, idle0) = self.snapshots["start"]
        t1, after, (total1, idle1) = self.snapshots["end"]
        seconds = t1 - t0
        used: Counter = Counter()
        others: Counter = Counter()
        for pid, (comm, group, parent, ticks) in after.items():
            spent = ticks - (before[pid][3] if pid in before and before[pid][0] == comm else 0)
            name = self._group(pid, comm, group, parent, server_group)
            used[name] += spent
            if name == "other" and spent:
                others[pid] += spent
        busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
        cores = ", ".join(f"{name} {used[name] / self.TICK / seconds:.2f}"
                          for name in ("server", "client", "postgres", "redis", "other"))
        text = f"{cores} cores; machine busy {busy:.0%} of {os.cpu_count()} cores"
        heavy = [(pid, ticks) for pid, ticks in others.most_common(3) if ticks / self.TICK / seconds >= 0.05]
        if heavy:
            text += "\n" + " " * 43 + "other: " + "; ".join(
                f"{ticks / self.TICK / seconds:.2f} {(_cmdline(pid) or after[pid][0])[:70]}" for pid, ticks in heavy)
        return text


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# Setup and teardown


async def _admin_sql(admin_url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(f"{admin_url}/postgres", timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _found_emails(database_url: str, emails: list[str]) -> tuple[set[str], int]:
    import asyncpg

    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await connection.fetch("select email from lead where email = any($1::text[])", emails)
        total = await connection.fetchval("select count(*) from lead where email like $1", f"%@{EMAIL_DOMAIN}")
    finally:
        await connection.close()
    return {r["email"] for r in rows}, total


def flush_redis(url: str) -> int:
    from redis import Redis

    client = Redis.from_url(url)
    try:
        keys = client.dbsize()
        client.flushdb()
        return keys
    finally:
        client.close()


def run_step(label: str, command: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{label} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return time.monotonic() - started


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    subject = git("log", "-1", "--format=%s")
    return f"{commit} {subject!r}" + (f" + {len(changed)} uncommitted changed/new files" if changed else "")


def versions() -> str:
    from importlib.metadata import version

    return " / ".join([platform.python_version()] + [version(p) for p in ("litestar", "uvicorn", "jinja2", "piccolo")])


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# Output


def line(label: str, value: str) -> None:
    print(f"  {label:<40} {value}", flush=True)


def ok_count(result: LoadResult) -> int:
    return sum(n for status, n in result.statuses.items() if 200 <= status < 400)


def describe(result: LoadResult, ok_label: str = "2xx/3xx") -> None:
    ok = ok_count(result)
    line("answers in the window", f"{result.completed:,} in {result.duration:g} s = {result.rate:,.0f}/s "
         f"({ok_label}: {ok / result.duration:,.0f}/s)")
    line("latency p50 / p95 / p99 / max", " / ".join(f"{result.percentile_ms(p):.1f}" for p in (50, 95, 99, 100)) + " ms")
    line("status codes (window)", ", ".join(f"{s}: {n:,}" for s, n in sorted(result.statuses.items())) or "none")
    odd = {s: n for s, n in result.all_statuses.items() if not 200 <= s < 400}
    line("non-2xx/3xx (whole run incl. warm-up)", ", ".join(f"{s}: {n:,}" for s, n in sorted(odd.items())) or "none")
    if result.errors:
        line("client errors", ", ".join(f"{k}: {n}" for k, n in result.errors.most_common()))
    if result.completed:
        line("mean body size", f"{result.body_bytes / result.completed:,.0f} bytes")
    if result.spread:
        line("connections per server worker", " / ".join(str(n) for _, n in sorted(result.spread.items()))
             + ("" if max(result.spread.values()) - min(result.spread.values()) <= result.processes else "  (UNEVEN)"))
    line("load client CPU", f"{result.client_cpu_s / result.duration:.2f} cores ({result.processes} process"
         f"{'es' if result.processes > 1 else ''})")


def report_log(server: Server, offset: int) -> None:
    problems = server.problems_since(offset)
    line("server log: errors / tracebacks", f"{len(problems):,}" + (f", first: {problems[0].strip()[:120]}" if problems else ""))


@dataclass
class Figures:
    bare_rate: float | None = None
    app_rate: float | None = None
    capture_rate: float | None = None
    capture_latency: tuple[float, float, float] | None = None
    accepted: int | None = None
    found: int | None = None
    refused: int = 0
    notes: list[str] = field(default_factory=list)


def summary(args: argparse.Namespace, figures: Figures) -> None:
    print("\n[6] summary", flush=True)
    rows = [("figure", "goal", "measured", "meets goal")]
    if figures.bare_rate is not None:
        rows.append(("bare Litestar page (ceiling), GET/s", "-", f"{figures.bare_rate:,.0f}", ""))
    if figures.app_rate is not None:
        rows.append((f"GET /l/{args.slug} on leadkiln, GET/s", "-", f"{figures.app_rate:,.0f}", ""))
    if figures.bare_rate and figures.app_rate is not None:
        ratio = figures.app_rate / figures.bare_rate
        rows.append(("  ratio app / ceiling", f">= {GET_RATIO_GOAL:g}", f"{ratio:.2f}",
                     "yes" if ratio >= GET_RATIO_GOAL else "NO"))
    if figures.capture_rate is not None:
        rows.append((f"POST /l/{args.slug} accepted captures/s", f">= {CAPTURE_RATE_GOAL:g}", f"{figures.capture_rate:,.0f}",
                     "yes" if figures.capture_rate >= CAPTURE_RATE_GOAL else "NO"))
    if figures.capture_latency is not None:
        latency = " / ".join(f"{v:.1f}" for v in figures.capture_latency) + " ms"
        rows.append(("  capture latency p50 / p95 / p99", "-", latency, ""))
        rows.append(("  refused (not 200/303), whole run", "0", f"{figures.refused:,}", "yes" if figures.refused == 0 else "NO"))
    if figures.accepted is not None:
        complete = figures.found == figures.accepted
        rows.append(("accepted captures found in lead", "all", f"{figures.found:,} / {figures.accepted:,}",
                     "yes" if complete else "NO"))
    rows.append(("load average (1 5 15 min) at the end", "-", loadavg(), f"{os.cpu_count()} cores"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))
    for note in figures.notes:
        print(f"  note: {note}")


# The run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.landing_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="uvicorn web processes for both servers (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive client connections (default 32)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each window (default 2)")
    parser.add_argument("--client-processes", type=int, default=1, help="processes sharing the connections (default 1)")
    parser.add_argument("--port", type=int, default=0,
                        help="port of the app; the bare app takes the next one (default: free ports)")
    parser.add_argument("--slug", default="seo", help="landing page to load (default seo, seeded by the demo data)")
    parser.add_argument("--only", choices=("get", "post"), default=None, help="run only the GET comparison or only the captures")
    parser.add_argument("--launcher", choices=("cli", "uvicorn"), default="cli",
                        help="start the app with `leadkiln serve` (default) or with `uvicorn server.asgi:app --no-access-log`")
    parser.add_argument("--postgres", default=os.environ.get("LEADKILN_BENCH_PG", "postgres://postgres@127.0.0.1:5432"),
                        help="PostgreSQL server (a fresh database is created there and dropped after)")
    parser.add_argument("--redis-db", type=int, default=9,
                        help="database number on redis://127.0.0.1:6379, flushed before and after (default 9)")
    parser.add_argument("--keep", action="store_true", help="keep the database, the Redis keys and the data directory")
    return parser.parse_args(argv)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "leadkiln").exists():
        bin_dir = ROOT / ".venv" / "bin"
    port = args.port or free_port()
    bare_port = port + 1 if args.port else free_port()
    host = f"127.0.0.1:{port}"
    run_id = "b" + uuid.uuid4().hex[:8]
    database = f"leadkiln_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    database_url = f"{args.postgres.rstrip('/')}/{database}"
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    data_dir = Path(tempfile.mkdtemp(prefix="leadkiln-landing-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES} | {
        "DATA_DIR": str(data_dir), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "SMTP_URL": f"smtp://127.0.0.1:{free_port()}", "PUBLIC_URL": f"http://{host}",
        "SECRET_KEY": "landing-bench-secret-key-not-for-production",
        "CAPTURE_LIMIT_IP": "100000000/60", "CAPTURE_LIMIT_EMAIL": "100000000/60",
    }
    serve_help = subprocess.run([str(bin_dir / "leadkiln"), "serve", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    cli_quiet = "--no-access-log" in serve_help
    access_log = args.launcher == "cli" and not cli_quiet
    uvicorn_options = ["--host", "127.0.0.1", "--workers", str(args.workers), "--log-level", "info",
                       "--proxy-headers", "--no-server-header"] + ([] if access_log else ["--no-access-log"])
    if args.launcher == "cli":
        app_command = [str(bin_dir / "leadkiln"), "serve", "--host", "127.0.0.1", "--port", str(port),
                       "--workers", str(args.workers)] + (["--no-access-log"] if cli_quiet else [])
    else:
        app_command = [str(bin_dir / "uvicorn"), "server.asgi:app", "--port", str(port)] + uvicorn_options
    bare_command = [str(bin_dir / "uvicorn"), "bench.landing_bench:bare_app", "--factory",
                    "--port", str(bare_port)] + uvicorn_options
    app = Server("leadkiln", app_command, env, port, data_dir / "app.log")
    bare = Server("bare Litestar", bare_command, env, bare_port, data_dir / "bare.log")
    figures = Figures()
    created_database = False

    print("leadkiln landing benchmark", flush=True)
    line("git commit", git_commit())
    line("python / litestar / uvicorn / jinja2 / piccolo", versions())
    line("cores / load average (1 5 15 min)", f"{os.cpu_count()} / {loadavg()}")
    line("app command", " ".join(Path(app_command[0]).name if i == 0 else a for i, a in enumerate(app_command)))
    line("ceiling command", " ".join(Path(bare_command[0]).name if i == 0 else a for i, a in enumerate(bare_command)))
    line("access log", "on for both (uvicorn's default, as `leadkiln serve` has no --no-access-log), to a file"
         if access_log else "off for both")
    line("load", f"{args.connections} keep-alive connections, {args.client_processes} client process(es), "
         f"{args.warmup:g} s warm-up + {args.duration:g} s measured per phase")
    if (ROOT / ".env").exists():
        line("note", f"{ROOT / '.env'} exists: the servers read it (for variables the bench does not set)")
    if access_log:
        figures.notes.append("both servers write uvicorn's access log (leadkiln serve cannot turn it off); "
                             "--launcher uvicorn runs both with --no-access-log")
    try:
        print("\n[1] setup", flush=True)
        asyncio.run(_admin_sql(args.postgres.rstrip("/"), f'create database "{database}"'))
        created_database = True
        line("database", f"{database} (fresh)")
        line("redis", f"{redis_url} ({flush_redis(redis_url)} keys flushed)")
        line("data dir", str(data_dir))
        line("leadkiln migrate", f"{run_step('leadkiln migrate', [str(bin_dir / 'leadkiln'), 'migrate'], env):.1f} s")
        # As `leadkiln demo` seeds (no pool): run_with_database()'s pool of max_size=4 is refused by
        # asyncpg's default min_size of 10 on PostgreSQL.
        seed = ("import asyncio, server; from server.demo_data import seed_demo; "
                "asyncio.run(seed_demo(delay_minutes=0, historical_leads=0))")
        seconds = run_step("seeding the demo data", [str(bin_dir / "python"), "-c", seed], env)
        line("seed_demo(historical_leads=0)", f"{seconds:.1f} s")
        line(f"app healthy on :{port}", f"after {app.start('/health'):.1f} s")
        with urllib.request.urlopen(f"http://{host}/l/{args.slug}", timeout=10) as response:
            page = response.read()
        template, token = bare_template(page)
        line(f"GET /l/{args.slug} (one, for the template)",
             f"{len(page):,} bytes; CSRF token {'found' if token else 'NOT found'}")

        if args.only != "post":
            templates = data_dir / "bare-templates"
            templates.mkdir()
            (templates / "page.html").write_text(template)
            bare.env = env | {BARE_TEMPLATE_DIR: str(templates), BARE_TOKEN: token}
            print(f"\n[2] the ceiling: bare Litestar rendering the page as a template, GET /l/{args.slug} on :{bare_port}",
                  flush=True)
            line("bare app healthy", f"after {bare.start('/health'):.1f} s")
            with urllib.request.urlopen(f"http://127.0.0.1:{bare_port}/l/{args.slug}", timeout=10) as response:
                bare_page = response.read()
            line("page size bare / app", f"{len(bare_page):,} / {len(page):,} bytes"
                 + ("" if len(bare_page) == len(page) else "  (DIFFERENT)"))
            meter, offset = CpuMeter(database), bare.log_size()
            result = run_load(PageViews(args.slug, f"127.0.0.1:{bare_port}"), "127.0.0.1", bare_port,
                              connections=args.connections, duration=args.duration, warmup=args.warmup,
                              processes=args.client_processes, on_window=meter, balancer=ProcessBalancer(bare_port, bare.pgid))
            describe(result)
            line("CPU in the window", meter.summary(bare.pgid))
            report_log(bare, offset)
            figures.bare_rate = result.statuses.get(200, 0) / result.duration
            bare.stop()

            print(f"\n[3] GET /l/{args.slug} on leadkiln (first visits: no cookies, each view a new visitor)", flush=True)
            meter, offset = CpuMeter(database), app.log_size()
            result = run_load(PageViews(args.slug, host), "127.0.0.1", port, connections=args.connections,
                              duration=args.duration, warmup=args.warmup, processes=args.client_processes, on_window=meter,
                              balancer=ProcessBalancer(port, app.pgid))
            describe(result)
            line("CPU in the window", meter.summary(app.pgid))
            report_log(app, offset)
            figures.app_rate = sum(n for s, n in result.statuses.items() if s == 200) / result.duration
            line("ratio app / ceiling", f"{figures.app_rate / figures.bare_rate:.2f} (goal >= {GET_RATIO_GOAL:g})"
                 if figures.bare_rate else "n/a")

        if args.only != "get":
            print(f"\n[4] POST /l/{args.slug}: captures on PostgreSQL, a new address each", flush=True)
            meter, offset = CpuMeter(database), app.log_size()
            captures = Captures(args.slug, host, run_id)
            result = run_load(captures, "127.0.0.1", port, connections=args.connections, duration=args.duration,
                              warmup=args.warmup, processes=args.client_processes, on_window=meter,
                              balancer=ProcessBalancer(port, app.pgid))
            describe(result, ok_label="accepted")
            line("CPU in the window", meter.summary(app.pgid))
            report_log(app, offset)
            accepted_in_window = sum(result.statuses.get(s, 0) for s in ACCEPTED)
            figures.capture_rate = accepted_in_window / result.duration
            figures.capture_latency = (result.percentile_ms(50), result.percentile_ms(95), result.percentile_ms(99))
            line("accepted captures/s", f"{figures.capture_rate:,.0f} (goal >= {CAPTURE_RATE_GOAL:g})")
            report = result.report
            refused: Counter = sum(report.get("refused", []), Counter())
            figures.refused = sum(refused.values())
            for status, sample in sorted({k: v for d in report.get("refused_sample", []) for k, v in d.items()}.items()):
                line(f"refused {status}, first answer", " ".join(sample.split())[:200])
            if report.get("odd_location"):
                line("303 not to the thanks page", f"{len(report['odd_location'])}, e.g. {report['odd_location'][0]}")

            print("\n[5] every accepted capture in the lead table?", flush=True)
            accepted = report.get("accepted", [])
            distinct = set(accepted)
            found, bench_leads = asyncio.run(_found_emails(database_url, sorted(distinct)))
            missing = sorted(distinct - found)
            figures.accepted, figures.found = len(distinct), len(found)
            line("accepted answers (whole run)", f"{len(accepted):,} ({len(distinct):,} distinct addresses)")
            line("found in lead / accepted", f"{len(found):,} / {len(distinct):,}")
            line("missing", (", ".join(missing[:20]) + (f" … and {len(missing) - 20} more" if len(missing) > 20 else ""))
                 if missing else "none")
            line(f"lead rows @{EMAIL_DOMAIN} (any answer)", f"{bench_leads:,}")
    except KeyboardInterrupt:
        print("\ninterrupted: stopping", flush=True)
        figures.notes.append("interrupted: the figures above are partial")
    except Exception as exc:  # noqa: BLE001 - print it, then clean up
        print(f"\nlanding_bench: {exc}", file=sys.stderr, flush=True)
        for server in (app, bare):
            if server.process is not None:
                print(f"--- last lines of the {server.name} log ---\n{server.log_tail()}", file=sys.stderr, flush=True)
        figures.notes.append(f"stopped by an error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bare.stop()
        stopped = app.stop()
        if stopped > 3:
            figures.notes.append(f"leadkiln took {stopped:.1f} s to stop after SIGTERM")
        summary(args, figures)
        if args.keep:
            print(f"\n  kept: database {database_url}, {redis_url}, {data_dir}")
        else:
            if created_database:
                try:
                    asyncio.run(_admin_sql(args.postgres.rstrip("/"), f'drop database if exists "{database}" with (force)'))
                except Exception as exc:  # noqa: BLE001
                    print(f"  could not drop database {database}: {exc}", file=sys.stderr)
            try:
                flush_redis(redis_url)
            except Exception as exc:  # noqa: BLE001
                print(f"  could not flush {redis_url}: {exc}", file=sys.stderr)
            shutil.rmtree(data_dir, ignore_errors=True)
            print(f"\n  cleaned up: database {database} dropped, {redis_url} flushed, {data_dir} removed")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return 1 if any(n.startswith("stopped by an error") for n in figures.notes) else 0


if __name__ == "__main__":
    sys.exit(main())
