"""Nurture-chain delivery benchmark: worker throughput beside a bare SMTP client (the ceiling,
measured in the same run), the sweeper's enqueue time for 100,000 due steps, and the time from
a form POST to the SMTP sink accepting the chain's first letter.

    cd /work/main && .venv/bin/python -m bench.chain_bench                  # PostgreSQL, about 2 minutes
    cd /work/main && .venv/bin/python -m bench.chain_bench --db sqlite
    cd /work/main && .venv/bin/python -m bench.chain_bench --only delivery --letters 500 --profile  # where time goes

It (re)creates the database `leadkiln_chain_bench` (or an SQLite file in a temporary DATA_DIR),
flushes Redis database 10, migrates, seeds the demo content (three topics, each with a 5-step
chain) and gives every step after the first a one-year delay, so a letter's job queues its next
step far in the future. Letters go to `bench/smtp_sink.py`, an aiosmtpd server in a process of
its own that logs the time, Message-ID and recipients of each letter it accepts.

1. Delivery. The ceiling: a bare aiosmtplib client with C reused connections sending M
   pre-built copies of one real rendered letter. Then the product: M leads, each with an
   enrollment whose first step is due now (written with SQL), `jobs.sweep`, and a real ARQ
   worker in this process (WorkerSettings' functions, max_jobs and timeouts, ARQ's default
   poll delay as `leadkiln worker` has; no cron) with `ctx={"relay": Relay(config,
   connections=C)}`, stopped once it has finished every job the sweep queued (burst mode does
   not fit, see delivery_part). Two diagnostic rows split the gap: `Relay.send` of pre-built
   messages, and the `send_step` job function called by max_jobs tasks without ARQ; the CPU
   milliseconds of each piece of composing a letter are printed too. Each row is checked: the
   sink got exactly M letters, the ledger has M `sent` rows. The ceiling is the best of three runs.
2. Sweeper. 100,000 enrollments due now; one `jobs.sweep` as the cron runs it (due_enrollments'
   limit of 10,000), a second one at once, then all 100,000 through `queue_send` (with
   `due_enrollments(limit=...)` when it can read that many), and the same jobs written with
   pipelined Redis commands for comparison. Redis commands per job are counted (INFO
   commandstats); `--profile` adds a cProfile listing of a sweep.
3. Capture to SMTP. `leadkiln serve` and `leadkiln worker` as separate processes; N form POSTs
   to /l/seo, a new address each, spaced --spacing apart; for each, the time from sending the
   POST to the sink accepting the chain letter of position 1 (`<lk.D.E.1@…>`) to that address.

Nothing is asserted: the figures are printed beside their goals, with the CPU each group of
processes used meanwhile and the load average (other work on the machine skews every figure).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import html
import io
import logging
import math
import os
import platform
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (python bench/chain_bench.py) as well as with -m
    sys.path.insert(0, str(ROOT))

from bench.landing_bench import (Server, _admin_sql, _cmdline, _die_with_parent, _proc_stat, flush_redis, free_port,  # noqa: E402
                                 git_commit, loadavg)
from bench.smtp_sink import Accepted, Sink  # noqa: E402

RATIO_GOAL = 0.7
LATENCY_P95_GOAL = 5.0
EMAIL_DOMAIN = "bench.example.com"
DATABASE = "leadkiln_chain_bench"
LATER_STEP_DELAY_MINUTES = 365 * 24 * 60
"""Steps after the first wait a year: a sent letter queues its next step, deferred out of the run."""
FIRST_LETTER = re.compile(r"^<lk\.\d+\.\d+\.1@")
CSRF_INPUT = re.compile(r'name="_csrf_token" value="([^"]+)"')
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SMTP_URL", "DATA_DIR", "PUBLIC_URL", "SECRET_KEY", "PICCOLO_CONF",
                     "CAPTURE_LIMIT_IP", "CAPTURE_LIMIT_EMAIL", "SEND_RATE", "FREQUENCY_CAP", "SMTP_CONNECTIONS",
                     "DKIM_DOMAIN", "DKIM_SELECTOR", "DKIM_KEY_FILE")


# Figures


@dataclass
class Rate:
    """One delivery measurement: letters through the sink per second, and its checks."""

    label: str
    letters: int
    seconds: float
    sink_count: int = 0
    sink_distinct: int = 0
    ledger_sent: int | None = None
    outcomes: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.letters / self.seconds if self.seconds else 0.0


@dataclass
class Figures:
    rates: dict[str, Rate] = field(default_factory=dict)
    sweep_one: tuple[float, int] | None = None
    sweep_again: tuple[float, int, int] | None = None
    sweep_all: tuple[float, int, int, str] | None = None
    sweep_pipelined: tuple[float, int] | None = None
    latency: list[float] | None = None
    latency_expected: int = 0
    notes: list[str] = field(default_factory=list)


def line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}", flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# CPU


class CpuMeter:
    """CPU used between two snapshots by: this process (client or worker), the sink, PostgreSQL
    (this database's backends and the server's own processes), Redis, named process groups,
    and everything else on the machine."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, sink: Sink, groups: dict[int, str] | None = None) -> None:
        self.sink = sink
        self.groups = groups or {}
        self.start = self._snapshot()
        self.own_cpu = time.process_time()

    @staticmethod
    def _snapshot() -> tuple[float, dict[int, tuple[str, int, int, int]], tuple[int, int]]:
        processes = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(int(entry))
                if stat:
                    processes[int(entry)] = (stat[0], stat[2], stat[3], stat[4])
        with open("/proc/stat") as handle:
            numbers = [int(x) for x in handle.readline().split()[1:]]
        return time.monotonic(), processes, (sum(numbers[:8]), numbers[3] + numbers[4])

    def _group(self, pid: int, comm: str, group: int, parent: int) -> str:
        if pid == os.getpid():
            return "bench"
        if pid == self.sink.pid:
            return "sink"
        if group in self.groups:
            return self.groups[group]
        if comm.startswith("redis"):
            return "redis"
        if comm.startswith("postgres"):
            command = _cmdline(pid)
            if re.match(r"postgres: \S+ \S+ \S+\(\d+\)", command) and f" {DATABASE} " not in command:
                return "other"
            return "postgres"
        return "other"

    def summary(self, letters: int = 0) -> str:
        """Cores used by each group; with `letters`, also this process's CPU milliseconds per letter."""
        own_ms = (time.process_time() - self.own_cpu) * 1000 / letters if letters else None
        t0, before, (total0, idle0) = self.start
        t1, after, (total1, idle1) = self._snapshot()
        seconds = max(t1 - t0, 1e-6)
        used: Counter = Counter()
        others: Counter = Counter()
        for pid, (comm, group, parent, ticks) in after.items():
            spent = ticks - (before[pid][3] if pid in before and before[pid][0] == comm else 0)
            name = self._group(pid, comm, group, parent)
            used[name] += spent
            if name == "other":
                others[pid] += spent
        busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
        names = ["bench", *sorted(set(self.groups.values())), "sink", "postgres", "redis", "other"]
        text = ", ".join(f"{n} {used[n] / self.TICK / seconds:.2f}" for n in names) + \
            f" cores; machine busy {busy:.0%} of {os.cpu_count()}"
        if own_ms is not None:
            text = f"this process {own_ms:.2f} ms a letter; " + text
        heavy = [(pid, t) for pid, t in others.most_common(2) if t / self.TICK / seconds >= 0.1]
        if heavy:
            text += "; busiest other: " + "; ".join(
                f"{t / self.TICK / seconds:.2f} {(_cmdline(pid) or after[pid][0])[:60]}" for pid, t in heavy)
        return text


# Setup


def configure(args: argparse.Namespace, data_dir: Path) -> dict[str, str]:
    """The environment leadkiln reads, set before any of its modules is imported."""
    for name in SERVICE_VARIABLES:
        os.environ.pop(name, None)
    if args.db == "postgres":
        database_url = f"{args.postgres.rstrip('/')}/{DATABASE}"
    else:
        database_url = f"sqlite:///{data_dir / 'leadkiln.db'}"
    values = {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "PUBLIC_URL": "http://127.0.0.1:8000",
        "SECRET_KEY": "chain-bench-secret-key-not-for-production",
        "PICCOLO_CONF": "server.piccolo_conf",
    }
    os.environ.update(values)
    return values


def cli_like_logging(path: Path) -> None:
    """The worker's logging as `leadkiln worker` sets it up (INFO, the same quietened loggers),
    into a file: the ARQ rows pay for arq's two log lines per job, as the real worker does."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("piccolo.engine.base").setLevel(logging.WARNING)
    logging.getLogger("arq.worker").addFilter(lambda record: "cron:sweep" not in record.getMessage())


def log_problems(path: Path, offset: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [row for row in text.splitlines() if " ERROR " in row or " WARNING " in row or "Traceback" in row]


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def versions() -> str:
    from importlib.metadata import version

    return " / ".join([platform.python_version()] + [version(p) for p in ("arq", "aiosmtplib", "aiosmtpd", "piccolo", "redis")])


async def make_due(tag: str, count: int, chains: list[int], pg: bool, now: datetime) -> None:
    """`count` leads `tag-N@…`, each enrolled (treatment) in one of the chains with step 1 due now.

    Plain SQL for speed: the ORM would spend longer building rows than the benchmark measures.
    """
    from landing.tables import Lead

    ts = "{}::timestamptz" if pg else "{}"
    await Lead.raw(
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {int(count)}) "
        "INSERT INTO lead (email, first_name, company, source, confirmed, created_at, updated_at) "
        f"SELECT '{tag}-' || i || '@{EMAIL_DOMAIN}', 'Ann', 'Acme', 'bench', TRUE, {ts}, {ts} FROM n",
        now, now)
    which = " ".join(f"WHEN {k} THEN {int(c)}" for k, c in enumerate(chains))
    await Lead.raw(
        'INSERT INTO enrollment (lead, chain, "group", variant, status, next_position, due_at, exit_reason, reason, enrolled_at) '
        f"SELECT id, CASE id % {len(chains)} {which} END, 'treatment', 'A', 'active', 1, {ts}, '', 'download', {ts} "
        f"FROM lead WHERE email LIKE '{tag}-%'",
        now - timedelta(seconds=1), now - timedelta(seconds=1))


async def ledger(tag: str) -> tuple[int, Counter]:
    """Sent rows, and rows by status, of the deliveries to the `tag-…` leads."""
    from content.tables import Delivery

    rows = await Delivery.raw(
        "SELECT d.status AS status, count(*) AS n FROM delivery d JOIN lead l ON l.id = d.lead "
        f"WHERE l.email LIKE '{tag}-%' GROUP BY d.status")
    statuses = Counter({r["status"]: r["n"] for r in rows})
    return statuses.get("sent", 0), statuses


def check_sink(rate: Rate, letters: list[Accepted], tag: str | None) -> None:
    """What the sink accepted for this row: all letters, and distinct Message-IDs to `tag-…`."""
    mine = [a for a in letters if tag is None or all(r.startswith(f"{tag}-") for r in a.recipients)]
    rate.sink_count = len(letters)
    rate.sink_distinct = len({a.message_id for a in mine})


def report_rate(rate: Rate, ceiling: Rate | None, expected: int) -> None:
    checks = f"sink got {rate.sink_count:,} letters ({rate.sink_distinct:,} distinct Message-IDs) of {expected:,}"
    if rate.ledger_sent is not None:
        checks += f"; ledger: {rate.ledger_sent:,} sent"
    ok = rate.sink_count == expected and rate.sink_distinct == expected and rate.ledger_sent in (None, expected)
    line(rate.label, f"{rate.letters:,} letters in {rate.seconds:.2f} s = {rate.rate:,.0f} letters/s"
         + (f" ({rate.rate / ceiling.rate:.2f} of the ceiling)" if ceiling and ceiling.rate else ""))
    line("  checks", checks + ("" if ok else "  (MISMATCH)"))
    if rate.outcomes:
        line("  outcomes", ", ".join(f"{k} {v:,}" for k, v in rate.outcomes.most_common()))


# Part 1: delivery throughput


async def bare_send(host: str, port: int, letters: list[tuple[str, str, bytes]], connections: int) -> float:
    """The ceiling: `connections` aiosmtplib clients, connected first, sharing the letters."""
    import aiosmtplib

    clients = [aiosmtplib.SMTP(hostname=host, port=port, timeout=30) for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in clients))
    work = iter(letters)

    async def drive(client: aiosmtplib.SMTP) -> None:
        for sender, recipient, raw in work:
            await client.mail(sender)
            await client.rcpt(recipient)
            await client.data(raw)

    started = time.perf_counter()
    await asyncio.gather(*(drive(c) for c in clients))
    seconds = time.perf_counter() - started
    await asyncio.gather(*(c.quit() for c in clients))
    return seconds


async def delivery_part(args: argparse.Namespace, sink: Sink, figures: Figures, chains: list[int], pool: Any) -> None:
    from arq.worker import Worker, get_kwargs

    from content.delivery import compose, lead_context
    from content.letters import render_letter
    from content.mail import LETTER_POLICY, Envelope, Relay, address_of, build_message
    from content.tables import Chain, Step
    from content.tracking import track
    from landing.tables import Lead, Topic
    from landing.tokens import preferences_url, unsubscribe_url
    from server.settings import _parse_smtp_url
    from workers import jobs
    from workers.settings import WorkerSettings, redis_settings

    pg = args.db == "postgres"
    m, c = args.letters, args.connections
    config = _parse_smtp_url(sink.url)
    max_jobs = WorkerSettings.max_jobs

    # One real letter, rendered and tracked as a chain's first step is, for the ceiling's size.
    now = datetime.now(timezone.utc)
    chain = await Chain.objects().get(Chain.id == chains[0])
    step = await Step.objects().where((Step.chain == chain.id) & (Step.position == 1)).first()
    sample = Lead(email=f"sample@{EMAIL_DOMAIN}", first_name="Ann", company="Acme")
    await sample.save()
    composed = await compose(chain, step, sample, 9_999_999, 9_999_999, "A", now)
    raw = composed.message.as_bytes(policy=LETTER_POLICY)
    sender = address_of(str(composed.message["From"]))
    message_id = str(composed.message["Message-ID"]).encode()
    letters = []
    for i in range(m):
        to = f"ceiling-{i}@{EMAIL_DOMAIN}"
        variant = raw.replace(message_id, f"<lk.{9_000_000 + i}.{i}.1@bench>".encode(), 1)
        variant = variant.replace(f"To: sample@{EMAIL_DOMAIN}".encode(), f"To: {to}".encode(), 1)
        letters.append((sender, to, variant))
    line("letter (real step 1, rendered + tracked)", f"{len(raw):,} bytes, subject {composed.subject!r}")
    poll = getattr(WorkerSettings, "poll_delay", None)
    line("settings", f"M = {m:,} letters per row, C = {c} SMTP connections, ARQ max_jobs = {max_jobs}, "
         f"poll_delay = {f'{poll} s' if poll is not None else '0.5 s (ARQ default)'}")

    # a) the ceiling: the best of three runs, as other work on the machine only ever lowers it
    runs = []
    for _ in range(3):
        offset, meter = sink.offset(), CpuMeter(sink)
        seconds = await bare_send("127.0.0.1", sink.port, letters, c)
        cpu = meter.summary(m)
        run = Rate(f"a) ceiling: bare aiosmtplib, {c} connections", m, seconds)
        check_sink(run, sink.accepted(offset), "ceiling")
        runs.append((run, cpu))
    ceiling, cpu = max(runs, key=lambda r: r[0].rate)
    report_rate(ceiling, None, m)
    line("  best of 3 runs", " / ".join(f"{r.rate:,.0f}" for r, _ in runs) + " letters/s")
    line("  CPU (best run)", cpu)
    figures.rates["ceiling"] = ceiling

    # b) the relay alone, with the product's messages built beforehand: flattening and the pool
    messages = []
    for i in range(m):
        message = copy.deepcopy(composed.message)
        message.replace_header("To", f"relay-{i}@{EMAIL_DOMAIN}")
        message.replace_header("Message-ID", f"<lk.{9_000_000 + i}.{i}.1@bench>")
        messages.append(message)
    relay = Relay(config, connections=c)
    offset, meter = sink.offset(), CpuMeter(sink)
    work = iter(messages)

    async def relay_sender() -> None:
        for message in work:
            await relay.send(message)

    started = time.perf_counter()
    await asyncio.gather(*(relay_sender() for _ in range(max_jobs)))
    relay_rate = Rate(f"b) Relay({c}).send, pre-built messages", m, time.perf_counter() - started)
    cpu = meter.summary(m)
    await relay.close()
    check_sink(relay_rate, sink.accepted(offset), "relay")
    report_rate(relay_rate, ceiling, m)
    line("  CPU", cpu)
    figures.rates["relay"] = relay_rate
    del messages

    # Where a letter's CPU goes before SMTP: the pieces of compose(), one letter at a time
    # (synchronous calls, so their wall time is CPU time).
    topic = await Topic.objects().get(Topic.id == chain.topic)
    context = lead_context(sample, topic, chain) | {"unsubscribe_url": unsubscribe_url(sample.id),
                                                    "preferences_url": preferences_url(sample.id)}
    letter = render_letter(step.subject, step.body_markdown, context, "step 1")
    tracked = replace(letter, html=track(letter.html, 9_999_999).html)
    envelope = Envelope(chain.sender_name, chain.sender_email, sample.email, "<lk.9999999.9999999.1@bench>",
                        context["unsubscribe_url"], context["preferences_url"])
    pieces = {
        "render_letter (Jinja2 + Markdown)": lambda: render_letter(step.subject, step.body_markdown, context, "step 1"),
        "track (links, pixel, signatures)": lambda: track(letter.html, 9_999_999),
        "build_message (MIME)": lambda: build_message(tracked, envelope, sent_at=now),
        "as_bytes (flattening, in Relay.send)": lambda: composed.message.as_bytes(policy=LETTER_POLICY),
    }
    timings = []
    for name, piece in pieces.items():
        started = time.perf_counter()
        for _ in range(100):
            piece()
        timings.append(f"{name} {(time.perf_counter() - started) * 10:.2f}")
    started = time.perf_counter()
    for _ in range(50):
        await compose(chain, step, sample, 9_999_999, 9_999_999, "A", now)
    timings.append(f"compose() whole (with its one query) {(time.perf_counter() - started) * 20:.2f}")
    line("ms per letter, one at a time", "; ".join(timings))

    # c) the job function without ARQ: send_step by max_jobs tasks (fewer letters: it is a diagnostic)
    m_direct = min(m, args.diagnostic_letters)
    now = datetime.now(timezone.utc)
    await make_due("direct", m_direct, chains, pg, now)
    ids = [r["id"] for r in await Lead.raw(
        "SELECT e.id AS id FROM enrollment e JOIN lead l ON l.id = e.lead WHERE l.email LIKE 'direct-%' ORDER BY e.id")]
    relay = Relay(config, connections=c)
    ctx = {"relay": relay, "redis": pool}
    outcomes: Counter = Counter()
    work_ids = iter(ids)

    async def job_runner() -> None:
        for enrollment_id in work_ids:
            outcomes[await jobs.send_step(ctx, enrollment_id)] += 1

    profile = cProfile.Profile() if args.profile else None
    counts: Counter = Counter()
    if profile:
        count_queries(counts)
    offset, meter = sink.offset(), CpuMeter(sink)
    if profile:
        profile.enable()
    started = time.perf_counter()
    await asyncio.gather(*(job_runner() for _ in range(max_jobs)))
    direct = Rate(f"c) send_step x {max_jobs} tasks, no ARQ" + (" (profiled)" if profile else ""), outcomes["sent"],
                  time.perf_counter() - started, outcomes=outcomes)
    if profile:
        profile.disable()
    cpu = meter.summary(m_direct)
    await relay.close()
    check_sink(direct, sink.accepted(offset), "direct")
    direct.ledger_sent, _ = await ledger("direct")
    report_rate(direct, ceiling, m_direct)
    line("  CPU", cpu)
    figures.rates["direct"] = direct
    if profile:
        uncount_queries()
        line("  database calls per letter (profiled run)", ", ".join(f"{k} {v / m_direct:.1f}"
                                                                    for k, v in counts.most_common()))
        print_profile(profile, "send_step without ARQ", 25)
    await pool.flushdb()

    # d) the product: a sweep, then a real ARQ worker; e) the same with a short poll delay
    variants = [("arq", "d) ARQ worker (WorkerSettings)", {})]
    if args.poll_variant:
        variants.append(("arqpoll", "e) ARQ worker, poll_delay=0.05 s", {"poll_delay": 0.05}))
    for tag, label, extra in variants:
        now = datetime.now(timezone.utc)
        await make_due(tag, m, chains, pg, now)
        queued = await jobs.sweep({"redis": pool})
        relay = Relay(config, connections=c)
        options = {k: v for k, v in get_kwargs(WorkerSettings).items() if k not in ("cron_jobs", "redis_settings")}
        # Not burst=True: a burst worker waits until the queue is empty, and every sent letter
        # queues its next step a year ahead; its max_burst_jobs counts a finished job twice
        # until the next poll and stops a few jobs early. So the worker runs as `leadkiln
        # worker` runs it, and is stopped once it has finished every job the sweep queued.
        worker = Worker(**options | extra, redis_settings=redis_settings(), handle_signals=False, ctx={"relay": relay})
        log_offset = file_size(args.log_path)
        offset, meter = sink.offset(), CpuMeter(sink)
        started = time.perf_counter()
        running = asyncio.ensure_future(worker.async_run())
        try:
            while worker.jobs_complete + worker.jobs_failed < queued and not running.done():
                if time.perf_counter() - started > args.timeout:
                    figures.notes.append(f"{label}: stopped after {args.timeout:g} s with "
                                         f"{worker.jobs_complete + worker.jobs_failed} of {queued} jobs done")
                    break
                await asyncio.sleep(0.002)
            seconds = time.perf_counter() - started
            cpu = meter.summary(m)
        finally:
            # Jobs counted complete may still be writing their end to Redis: let them, as
            # close() cancels whatever is left.
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
            await worker.close()  # cancels its main loop; on_shutdown closes the relay
            await asyncio.gather(running, return_exceptions=True)
        accepted = sink.accepted(offset)
        sent, statuses = await ledger(tag)
        rate = Rate(label, sent, seconds, ledger_sent=sent,
                    outcomes=Counter({"jobs complete": worker.jobs_complete, "failed": worker.jobs_failed,
                                      "retried": worker.jobs_retried}))
        check_sink(rate, accepted, tag)
        report_rate(rate, ceiling, m)
        line("  sweep queued", f"{queued:,} send_step jobs")
        if set(statuses) - {"sent"}:
            line("  ledger by status", ", ".join(f"{k} {v:,}" for k, v in statuses.most_common()))
        if len(accepted) > 1:
            span = accepted[-1].at - accepted[0].at
            line("  first to last letter at the sink", f"{span:.2f} s = {(len(accepted) - 1) / span:,.0f} letters/s")
        line("  CPU", cpu)
        problems = log_problems(args.log_path, log_offset)
        line("  worker log: errors / warnings", f"{len(problems)}" + (f", first: {problems[0][:140]}" if problems else ""))
        figures.rates[tag] = rate
        await pool.flushdb()


_ENGINE_METHODS: dict[str, Any] = {}


def count_queries(counts: Counter) -> None:
    """Count the engine's queries and transactions (`--profile` only: it wraps the engine
    class's methods for the profiled run, and uncount_queries() puts them back)."""
    from piccolo.engine import engine_finder

    cls = type(engine_finder())
    run, transaction = cls.run_querystring, cls.transaction
    _ENGINE_METHODS.update(run_querystring=run, transaction=transaction)

    async def counted_run(self: Any, querystring: Any, *args: Any, **kwargs: Any) -> Any:
        inside = self.current_transaction.get() is not None if hasattr(self, "current_transaction") else False
        counts["queries in a transaction" if inside else "queries alone"] += 1
        return await run(self, querystring, *args, **kwargs)

    def counted_transaction(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["transactions"] += 1
        return transaction(self, *args, **kwargs)

    cls.run_querystring, cls.transaction = counted_run, counted_transaction
    if "sqlite" in cls.__name__.lower():
        import aiosqlite

        connect = aiosqlite.connect
        _ENGINE_METHODS["aiosqlite.connect"] = connect

        def counted_connect(*args: Any, **kwargs: Any) -> Any:
            counts["new SQLite connections (a thread each)"] += 1
            return connect(*args, **kwargs)

        aiosqlite.connect = counted_connect


def uncount_queries() -> None:
    import aiosqlite
    from piccolo.engine import engine_finder

    cls = type(engine_finder())
    for name, method in _ENGINE_METHODS.items():
        if name == "aiosqlite.connect":
            aiosqlite.connect = method
        else:
            setattr(cls, name, method)
    _ENGINE_METHODS.clear()


def print_profile(profile: cProfile.Profile, title: str, limit: int) -> None:
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(limit)
        text = out.getvalue().splitlines()
        start = next((i for i, row in enumerate(text) if row.strip().startswith("ncalls")), 0)
        print(f"\n  --- profile: {title}, by {order} ---")
        print("\n".join("  " + row for row in text[start:start + limit + 1]))


# Part 2: the sweeper


async def command_calls(pool: Any) -> Counter:
    stats = await pool.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()})


def per_job(before: Counter, after: Counter, jobs: int) -> str:
    delta = after - before
    delta.pop("info", None)
    total = sum(delta.values())
    top = ", ".join(f"{name} {n / jobs:.2f}" for name, n in delta.most_common(8))
    return f"{total / jobs:.2f} Redis commands per job ({top})" if jobs else "no jobs"


async def sweep_part(args: argparse.Namespace, figures: Figures, chains: list[int], pool: Any) -> None:
    from arq.constants import default_queue_name, job_key_prefix
    from arq.jobs import serialize_job

    from content.chains import EnrollmentDue, due_enrollments, queue_send, send_job_id
    from content.tables import Enrollment
    from workers import jobs

    pg = args.db == "postgres"
    n = args.sweep_enrollments
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    await make_due("sweep", n, chains, pg, now)
    line(f"{n:,} leads + enrollments due now (SQL)", f"{time.perf_counter() - started:.1f} s")
    if pg:
        await Enrollment.raw("ANALYZE enrollment")
        await Enrollment.raw("ANALYZE lead")
        await Enrollment.raw("ANALYZE delivery")
    await pool.flushdb()
    ctx = {"redis": pool}

    # One sweep as the cron runs it.
    calls = await command_calls(pool)
    started = time.perf_counter()
    queued = await jobs.sweep(ctx)
    seconds = time.perf_counter() - started
    calls_after = await command_calls(pool)
    in_redis = await pool.zcard(default_queue_name)
    figures.sweep_one = (seconds, queued)
    line("jobs.sweep() once (as the cron)", f"{seconds:.2f} s, queued {queued:,} = {queued / seconds:,.0f} jobs/s; "
         f"Redis queue holds {in_redis:,}")
    started = time.perf_counter()
    due = await due_enrollments()
    query_seconds = time.perf_counter() - started
    line("  of which due_enrollments() (run again)", f"{query_seconds:.2f} s for {len(due):,} rows; "
         f"so queue_send about {max(0.0, seconds - query_seconds) / max(1, queued) * 1e6:,.0f} us a job")
    line("  Redis commands", per_job(calls, calls_after, queued))

    # Straight away again: the same oldest 10,000 are due, and already queued.
    calls = await command_calls(pool)
    started = time.perf_counter()
    again = await jobs.sweep(ctx)
    seconds = time.perf_counter() - started
    calls_after = await command_calls(pool)
    in_redis = await pool.zcard(default_queue_name)
    figures.sweep_again = (seconds, again, in_redis)
    line("jobs.sweep() again at once", f"{seconds:.2f} s, queued {again:,} new; Redis queue holds {in_redis:,} of {n:,}")
    line("  Redis commands", per_job(calls, calls_after, len(due)) + " per due row (all already queued)")

    if args.profile:
        await pool.flushdb()
        profile = cProfile.Profile()
        profile.enable()
        await jobs.sweep(ctx)
        profile.disable()
        print_profile(profile, "jobs.sweep() of 10,000 due steps", 22)

    # All of them.
    await pool.flushdb()
    started = time.perf_counter()
    how = f"due_enrollments(limit={n:,})"
    try:
        due = await due_enrollments(limit=n)
    except Exception as exc:  # noqa: BLE001 - the failure is a finding; print it and go on
        message = " ".join(str(exc).split())[:160]
        line(f"due_enrollments(limit={n:,})", f"FAILED after {time.perf_counter() - started:.1f} s: "
             f"{type(exc).__name__}: {message}")
        figures.notes.append(f"due_enrollments(limit={n:,}) fails: {type(exc).__name__}: {message[:100]}")
        # The same rows (its first query, without the ledger check: no delivery rows exist
        # for these), read here only so that queue_send can be timed for all of them.
        started = time.perf_counter()
        rows = await Enrollment.raw(
            f"SELECT id, next_position, due_at FROM enrollment WHERE status = 'active' AND \"group\" = 'treatment' "
            f"AND due_at <= {'{}::timestamptz' if pg else '{}'} ORDER BY due_at", datetime.now(timezone.utc))
        due = [EnrollmentDue(r["id"], r["next_position"], r["due_at"] if not isinstance(r["due_at"], str)
                             else datetime.fromisoformat(r["due_at"])) for r in rows]
        how = "the due rows read with one SELECT by the bench"
    read_seconds = time.perf_counter() - started
    line("due rows read", f"{len(due):,} in {read_seconds:.2f} s ({how})")
    calls = await command_calls(pool)
    started = time.perf_counter()
    queued = 0
    for row in due:
        queued += await queue_send(pool, row)
    enqueue_seconds = time.perf_counter() - started
    calls_after = await command_calls(pool)
    in_redis = await pool.zcard(default_queue_name)
    total = read_seconds + enqueue_seconds
    figures.sweep_all = (total, queued, in_redis, how)
    line(f"queue_send for all {len(due):,}", f"{enqueue_seconds:.1f} s = {queued / enqueue_seconds:,.0f} jobs/s; "
         f"with the read {total:.1f} s")
    line("  Redis queue holds", f"{in_redis:,} jobs (expected {n:,})" + ("" if in_redis == n else "  (MISMATCH)"))
    line("  Redis commands", per_job(calls, calls_after, queued))

    # For comparison: the same jobs written with pipelined commands, 1,000 a round trip (SET NX
    # keeps the dedup of a deterministic job id; ZADD NX keeps a queued job's score).
    await pool.flushdb()
    started = time.perf_counter()
    now_ms = int(time.time() * 1000)
    for first in range(0, len(due), 1000):
        async with pool.pipeline(transaction=False) as pipe:
            for row in due[first:first + 1000]:
                job_id = send_job_id(row)
                job = serialize_job("send_step", (row.enrollment_id,), {}, None, now_ms, serializer=pool.job_serializer)
                pipe.set(job_key_prefix + job_id, job, px=pool.expires_extra_ms, nx=True)
                pipe.zadd(default_queue_name, {job_id: now_ms}, nx=True)
            await pipe.execute()
    seconds = time.perf_counter() - started
    in_redis = await pool.zcard(default_queue_name)
    figures.sweep_pipelined = (seconds, in_redis)
    line("for comparison: pipelined, 1,000 a trip", f"{seconds:.2f} s = {in_redis / seconds:,.0f} jobs/s; "
         f"Redis queue holds {in_redis:,}")
    await pool.flushdb()
    # Nothing may be due for part 3's worker.
    await Enrollment.raw("UPDATE enrollment SET status = 'completed', due_at = NULL WHERE status = 'active'")


# Part 3: from a form POST to the first letter


async def latency_part(args: argparse.Namespace, sink: Sink, figures: Figures, env: dict[str, str],
                       processes: list[Server]) -> None:
    import httpx

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "leadkiln").exists():
        bin_dir = ROOT / ".venv" / "bin"
    port = free_port()
    host = f"http://127.0.0.1:{port}"
    data_dir = Path(env["DATA_DIR"])
    service_env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES} | env | {
        "SMTP_URL": sink.url, "PUBLIC_URL": host, "CAPTURE_LIMIT_IP": "1000/60", "CAPTURE_LIMIT_EMAIL": "1000/3600",
    }
    web = Server("leadkiln serve", [str(bin_dir / "leadkiln"), "serve", "--host", "127.0.0.1", "--port", str(port),
                                    "--no-access-log"], service_env, port, data_dir / "serve.log")
    worker = Server("leadkiln worker", [str(bin_dir / "leadkiln"), "worker"], service_env, 0, data_dir / "worker.log")
    processes.extend([web, worker])
    line("web", f"leadkiln serve --port {port} --no-access-log: healthy after {web.start('/health'):.1f} s")
    # The worker has no HTTP health check: it is ready when ARQ's health key appears and the
    # crons it runs at startup (the sweep, rendering the ebooks with WeasyPrint) are done.
    started = time.monotonic()
    with open(worker.log_path, "ab") as log:
        worker.process = subprocess.Popen(worker.command, cwd=ROOT, env=service_env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
    from redis.asyncio import Redis

    redis = Redis.from_url(env["REDIS_URL"])
    try:
        while not (await redis.exists("arq:queue:health-check") and "render_stale_ebooks" in
                   " ".join(row for row in worker.log_path.read_text(errors="replace").splitlines() if "←" in row)):
            if worker.process.poll() is not None or time.monotonic() - started > 90:
                raise RuntimeError(f"leadkiln worker did not start:\n{worker.log_tail()}")
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    line("worker", f"leadkiln worker: polling, startup crons done after {time.monotonic() - started:.1f} s")

    async def prepare(address: str) -> tuple[httpx.AsyncClient, str]:
        client = httpx.AsyncClient(base_url=host, follow_redirects=False, timeout=30)
        response = await client.get(f"/l/{args.slug}")
        found = CSRF_INPUT.search(response.text)
        if response.status_code != 200 or not found:
            raise RuntimeError(f"GET /l/{args.slug}: {response.status_code}, CSRF token {'found' if found else 'missing'}")
        return client, html.unescape(found.group(1))

    async def run(addresses: list[str], spacing: float) -> tuple[dict[str, float], dict[str, float], Counter]:
        prepared = await asyncio.gather(*(prepare(a) for a in addresses))
        sent_at: dict[str, float] = {}
        answered: dict[str, float] = {}
        statuses: Counter = Counter()
        begin = time.monotonic() + 0.05

        async def post(k: int, address: str) -> None:
            client, token = prepared[k]
            await asyncio.sleep(max(0.0, begin + k * spacing - time.monotonic()))
            sent_at[address] = time.monotonic()
            response = await client.post(f"/l/{args.slug}", data={"_csrf_token": token, "email": address,
                                                                  "first_name": "Ann", "consent": "on"})
            answered[address] = time.monotonic() - sent_at[address]
            statuses[response.status_code] += 1

        try:
            await asyncio.gather(*(post(k, a) for k, a in enumerate(addresses)))
        finally:
            await asyncio.gather(*(client.aclose() for client, _ in prepared))
        return sent_at, answered, statuses

    async def first_letters(addresses: list[str], offset: int, deadline: float) -> dict[str, float]:
        wanted = set(addresses)
        found: dict[str, float] = {}
        while True:
            for letter in sink.accepted(offset):
                if FIRST_LETTER.match(letter.message_id):
                    for recipient in letter.recipients:
                        if recipient in wanted:
                            found.setdefault(recipient, letter.at)
            if len(found) == len(wanted) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    # Warm-up, not counted: the first requests compile templates and fill caches.
    warm = [f"warmup-{k}@{EMAIL_DOMAIN}" for k in range(2)]
    offset = sink.offset()
    await run(warm, args.spacing)
    got = await first_letters(warm, offset, time.monotonic() + 30)
    line("warm-up captures (not counted)", f"{len(warm)}, first letters {len(got)}")

    log_offsets = (file_size(web.log_path), file_size(worker.log_path))
    addresses = [f"capture-{k}@{EMAIL_DOMAIN}" for k in range(args.captures)]
    offset, meter = sink.offset(), CpuMeter(sink, {web.pgid: "web", worker.pgid: "worker"})
    sent_at, answered, statuses = await run(addresses, args.spacing)
    got = await first_letters(addresses, offset, time.monotonic() + 30)
    cpu = meter.summary()
    latencies = [got[a] - sent_at[a] for a in addresses if a in got]
    figures.latency, figures.latency_expected = latencies, len(addresses)
    line("POSTs", f"{len(addresses)} spaced {args.spacing * 1000:.0f} ms; answers "
         + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    line("POST answer time p50 / p95 / max", " / ".join(f"{percentile(list(answered.values()), p) * 1000:.0f}"
                                                      for p in (50, 95, 100)) + " ms")
    if latencies:
        line("POST -> sink accepts letter 1, p50/p95/max", " / ".join(f"{percentile(latencies, p):.2f}"
                                                                      for p in (50, 95, 100)) + " s")
    line("first letters received", f"{len(got)} of {len(addresses)}"
         + ("" if len(got) == len(addresses) else f"  (MISSING: {', '.join(sorted(set(addresses) - set(got))[:5])})"))
    line("CPU during the POSTs", cpu)
    for server, since in zip((web, worker), log_offsets):
        problems = server.problems_since(since)
        line(f"{server.name} log: errors / tracebacks", f"{len(problems)}" + (f", first: {problems[0][:120]}" if problems else ""))


# The run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chain_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres", help="database engine (default postgres)")
    parser.add_argument("--postgres", default=os.environ.get("LEADKILN_BENCH_PG", "postgres://postgres@127.0.0.1:5432"),
                        help=f"PostgreSQL server; the database {DATABASE} is dropped and created there")
    parser.add_argument("--redis-db", type=int, default=10, help="database on redis://127.0.0.1:6379, flushed (default 10)")
    parser.add_argument("--letters", type=int, default=None,
                        help="letters per delivery row, M (default 2000 on PostgreSQL, 1000 on SQLite)")
    parser.add_argument("--diagnostic-letters", type=int, default=500,
                        help="letters for the send_step-without-ARQ row (default 500)")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections, C (default 4, as SMTP_CONNECTIONS)")
    parser.add_argument("--sweep-enrollments", type=int, default=100_000, help="due steps for the sweeper (default 100000)")
    parser.add_argument("--captures", type=int, default=50, help="form POSTs in the latency part (default 50)")
    parser.add_argument("--spacing", type=float, default=0.1, help="seconds between the POSTs (default 0.1)")
    parser.add_argument("--slug", default="seo", help="landing page to post to (default seo)")
    parser.add_argument("--only", choices=("delivery", "sweep", "latency"), action="append",
                        help="run only this part (repeatable)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on a worker row after this many seconds")
    parser.add_argument("--poll-variant", action="store_true",
                        help="add an ARQ row with poll_delay=0.05 s (ARQ's default is 0.5 s)")
    parser.add_argument("--profile", action="store_true", help="cProfile listings of send_step without ARQ and of a sweep")
    parser.add_argument("--keep", action="store_true", help="keep the database, the Redis keys and the data directory")
    args = parser.parse_args(argv)
    if args.letters is None:
        args.letters = 2000 if args.db == "postgres" else 1000
    return args


async def bench(args: argparse.Namespace, figures: Figures, sink: Sink, env: dict[str, str],
                processes: list[Server]) -> None:
    from arq import create_pool
    from piccolo.engine import engine_finder
    from piccolo.engine.postgres import PostgresEngine

    from content.tables import Chain, Step
    from server.demo_data import seed_demo
    from server.settings import get_settings
    from workers.settings import redis_settings

    parts = args.only or ["delivery", "sweep", "latency"]
    engine = engine_finder()
    if isinstance(engine, PostgresEngine):
        # As the worker's startup opens it (min_size=1: asyncpg's default min of 10 is over small pools).
        await engine.start_connection_pool(min_size=1, max_size=get_settings().db_pool_size)
    pool = await create_pool(redis_settings())
    try:
        started = time.perf_counter()
        await seed_demo(delay_minutes=0, historical_leads=0)
        await Step.update({Step.delay_minutes: LATER_STEP_DELAY_MINUTES}).where(Step.position > 1)
        chains = [r["id"] for r in await Chain.select(Chain.id).order_by(Chain.id)]
        line("seed_demo + later steps a year apart", f"{time.perf_counter() - started:.1f} s, {len(chains)} chains")
        if "delivery" in parts:
            print("\n[2] delivery: letters/s through the sink", flush=True)
            await delivery_part(args, sink, figures, chains, pool)
        if "sweep" in parts:
            print(f"\n[3] sweeper: {args.sweep_enrollments:,} due steps into Redis", flush=True)
            await sweep_part(args, figures, chains, pool)
        if "latency" in parts:
            print(f"\n[4] form POST /l/{args.slug} -> SMTP accepts the chain's first letter "
                  f"(leadkiln serve + leadkiln worker)", flush=True)
            await latency_part(args, sink, figures, env, processes)
    finally:
        await pool.aclose()
        if isinstance(engine, PostgresEngine):
            await engine.close_connection_pool()


def summary(args: argparse.Namespace, figures: Figures) -> None:
    print(f"\n[5] summary ({args.db})", flush=True)
    rows = [("figure", "goal", "measured", "meets goal")]
    rates = figures.rates
    ceiling = rates.get("ceiling")
    names = {"ceiling": "ceiling: bare aiosmtplib, letters/s", "relay": "  Relay.send, pre-built (diagnostic)",
             "direct": "  send_step, no ARQ (diagnostic)", "arq": "ARQ worker (product), letters/s",
             "arqpoll": "  ARQ, poll_delay 0.05 s (diagnostic)"}
    for key, name in names.items():
        rate = rates.get(key)
        if rate is None:
            continue
        if key == "arq" and ceiling:
            ratio = rate.rate / ceiling.rate
            rows.append((name, "-", f"{rate.rate:,.0f}", ""))
            rows.append(("  ratio worker / ceiling", f">= {RATIO_GOAL:g}", f"{ratio:.2f}", "yes" if ratio >= RATIO_GOAL else "NO"))
        else:
            rows.append((name, "-", f"{rate.rate:,.0f}" + (f" ({rate.rate / ceiling.rate:.2f})" if ceiling and key != "ceiling" else ""), ""))
    product = rates.get("arq")
    if product is not None:
        ok = product.sink_count == args.letters and product.ledger_sent == args.letters
        rows.append(("ARQ row: sink letters / ledger sent", f"{args.letters:,} / {args.letters:,}",
                     f"{product.sink_count:,} / {product.ledger_sent:,}", "yes" if ok else "NO"))
    if figures.sweep_one:
        seconds, queued = figures.sweep_one
        rows.append(("one sweep (limit 10,000): s, jobs/s", "-", f"{seconds:.2f} s, {queued / seconds:,.0f}/s", ""))
    if figures.sweep_again:
        seconds, queued, held = figures.sweep_again
        rows.append(("  repeated at once: new jobs, queue", "-", f"{queued:,} new, {held:,} queued", ""))
    if figures.sweep_all:
        seconds, queued, held, how = figures.sweep_all
        rows.append((f"all {args.sweep_enrollments:,} queued: s, jobs/s", "-", f"{seconds:.1f} s, {queued / seconds:,.0f}/s", ""))
        rows.append(("  Redis holds", f"{args.sweep_enrollments:,}", f"{held:,}", "yes" if held == args.sweep_enrollments else "NO"))
    if figures.sweep_pipelined:
        seconds, held = figures.sweep_pipelined
        rows.append(("  pipelined writes (comparison)", "-", f"{seconds:.2f} s, {held / seconds:,.0f}/s", ""))
    if figures.latency is not None:
        latencies = figures.latency
        if latencies:
            p95 = percentile(latencies, 95)
            rows.append(("POST -> letter 1 at SMTP p50/p95/max", f"p95 <= {LATENCY_P95_GOAL:g} s",
                         " / ".join(f"{percentile(latencies, p):.2f}" for p in (50, 95, 100)) + " s",
                         "yes" if p95 <= LATENCY_P95_GOAL and len(latencies) == figures.latency_expected else "NO"))
        rows.append(("  first letters received", f"{figures.latency_expected}", f"{len(latencies)}",
                     "yes" if len(latencies) == figures.latency_expected else "NO"))
    rows.append(("load average (1 5 15 min) at the end", "-", loadavg(), f"{os.cpu_count()} cores"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, r in enumerate(rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))
    for note in figures.notes:
        print(f"  note: {note}")


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    data_dir = Path(tempfile.mkdtemp(prefix="leadkiln-chain-bench-"))
    args.log_path = data_dir / "worker-in-bench.log"
    env = configure(args, data_dir)
    figures = Figures()
    sink = Sink(data_dir / "sink.log", free_port())
    processes: list[Server] = []
    created = False

    print("leadkiln chain delivery benchmark", flush=True)
    line("git commit", git_commit())
    line("python / arq / aiosmtplib / aiosmtpd / piccolo / redis", versions())
    line("cores / load average (1 5 15 min)", f"{os.cpu_count()} / {loadavg()}")
    line("database", env["DATABASE_URL"])
    try:
        print("\n[1] setup", flush=True)
        if args.db == "postgres":
            asyncio.run(_admin_sql(args.postgres.rstrip("/"), f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
            asyncio.run(_admin_sql(args.postgres.rstrip("/"), f'CREATE DATABASE "{DATABASE}"'))
            created = True
        line("redis", f"{env['REDIS_URL']} ({flush_redis(env['REDIS_URL'])} keys flushed)")
        line("data dir", str(data_dir))
        sink.start()
        line("SMTP sink", f"{sink.url} (bench/smtp_sink.py, its own process, pid {sink.pid})")
        cli_like_logging(args.log_path)
        from server.cli import run_migrations

        started = time.perf_counter()
        run_migrations()
        line("migrations (server.cli.run_migrations)", f"{time.perf_counter() - started:.1f} s")
        asyncio.run(bench(args, figures, sink, env, processes))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping", flush=True)
        figures.notes.append("interrupted: the figures above are partial")
    except Exception as exc:  # noqa: BLE001 - print it, then clean up
        import traceback

        traceback.print_exc()
        for server in processes:
            print(f"--- last lines of the {server.name} log ---\n{server.log_tail()}", file=sys.stderr, flush=True)
        figures.notes.append(f"stopped by an error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in processes:
            stopped = server.stop()
            if stopped > 3:
                figures.notes.append(f"{server.name} took {stopped:.1f} s to stop after SIGTERM")
        sink.stop()
        summary(args, figures)
        if args.keep:
            print(f"\n  kept: {env['DATABASE_URL']}, {env['REDIS_URL']}, {data_dir}")
        else:
            if created:
                try:
                    asyncio.run(_admin_sql(args.postgres.rstrip("/"), f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
                except Exception as exc:  # noqa: BLE001
                    print(f"  could not drop database {DATABASE}: {exc}", file=sys.stderr)
            try:
                flush_redis(env["REDIS_URL"])
            except Exception as exc:  # noqa: BLE001
                print(f"  could not flush {env['REDIS_URL']}: {exc}", file=sys.stderr)
            shutil.rmtree(data_dir, ignore_errors=True)
            print(f"\n  cleaned up: {'database ' + DATABASE + ' dropped, ' if created else ''}{env['REDIS_URL']} flushed, "
                  f"{data_dir} removed")
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
