"""A light HTTP/1.1 keep-alive load generator on asyncio transports, for the web benches.

httpx spends more CPU per request than the server under test, which on a 2-core machine
makes the client the ceiling. This one writes hand-built requests on raw asyncio
connections (uvloop when installed), parses only the status line, the headers and the
Content-Length / chunked body, and keeps N connections busy for a fixed window after a
warm-up. It runs in this process or in a few processes (`processes=`).

What is sent is up to a `Scenario`: `prepare()` once per connection (e.g. a GET for a
CSRF cookie), `build()` the bytes of each request, `record()` each answer. Scenarios are
pickled into the client processes, and `report()` brings their findings back.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ANSWER_TIMEOUT_S = 30.0
"""After the window closes, answers still missing this long later count as timeouts."""


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    """Header names lower-cased, values as sent."""
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


class HttpError(Exception):
    """The server closed the connection or sent something that is not HTTP/1.1."""


class Connection(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.local_port = 0
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.must_close = False
        self._head: tuple[int, list[tuple[bytes, bytes]], int | None, bool, int] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local_port = transport.get_extra_info("sockname")[1]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            head = self._head
            if head is not None and head[2] is None and not head[3]:
                # A body delimited by the end of the connection.
                self._finish(head, bytes(self.buffer[head[4]:]), len(self.buffer))
            else:
                self.waiter.set_exception(HttpError(f"connection closed by the server ({exc or 'EOF'})"))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    async def request(self, raw: bytes) -> Response:
        if self.closed:
            raise HttpError("connection already closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self._head = None
        assert self.transport is not None
        self.transport.write(raw)
        if self.buffer:
            self._parse()
        return await self.waiter

    def _parse(self) -> None:
        buffer = self.buffer
        head = self._head
        if head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            if not lines[0].startswith(b"HTTP/1."):
                assert self.waiter is not None
                self.waiter.set_exception(HttpError(f"not an HTTP/1.x answer: {lines[0][:80]!r}"))
                return
            status = int(lines[0][9:12])
            headers = []
            length: int | None = None
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                value = value.strip()
                headers.append((name, value))
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and value.lower() == b"close":
                    self.must_close = True
            if length is None and not chunked and (status < 200 or status in (204, 304)):
                length = 0
            head = self._head = (status, headers, length, chunked, end + 4)
        status, headers, length, chunked, start = head
        if length is not None:
            if len(buffer) < start + length:
                return
            self._finish(head, bytes(buffer[start:start + length]), start + length)
        elif chunked:
            body = bytearray()
            at = start
            while True:
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    return
                size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = buffer.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        return
                    self._finish(head, bytes(body), trailer_end + 4)
                    return
                if len(buffer) < line_end + 2 + size + 2:
                    return
                body += buffer[line_end + 2:line_end + 2 + size]
                at = line_end + 2 + size + 2
        # else: the body ends when the connection does (connection_lost).

    def _finish(self, head: tuple[int, list[tuple[bytes, bytes]], int | None, bool, int], body: bytes, consumed: int) -> None:
        del self.buffer[:consumed]
        self._head = None
        assert self.waiter is not None
        self.waiter.set_result(Response(head[0], head[1], body))


class Scenario:
    """What one kind of load sends; subclass it (it must pickle when processes > 1)."""

    async def prepare(self, connection: Connection, index: int) -> None:
        """Once per client connection before the clock starts (and again after a reconnect)."""

    def build(self, index: int, seq: int) -> bytes:
        """The bytes of request number `seq` on connection `index`."""
        raise NotImplementedError

    def record(self, index: int, seq: int, response: Response) -> None:
        """Every answer, warm-up and tail included."""

    def report(self) -> dict[str, Any]:
        """What this scenario learned, merged across client processes by `merge_reports`."""
        return {}

    @staticmethod
    def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for report in reports:
            for key, value in report.items():
                if isinstance(value, (list, tuple)):
                    merged.setdefault(key, []).extend(value)
                elif isinstance(value, (int, float)):
                    merged[key] = merged.get(key, 0) + value
                else:
                    merged.setdefault(key, []).append(value)
        return merged


@dataclass
class LoadResult:
    """Counts for the measured window; `all_statuses` includes the warm-up and the tail."""

    duration: float
    connections: int
    processes: int
    completed: int = 0
    latencies: list[float] = field(default_factory=list)
    """Seconds, one per answer completed inside the window."""
    statuses: Counter = field(default_factory=Counter)
    all_statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    body_bytes: int = 0
    client_cpu_s: float = 0.0
    spread: Counter = field(default_factory=Counter)
    """Connections per server worker pid when the window opened (with a balancer)."""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.completed / self.duration if self.duration else 0.0

    def count(self, statuses: set[int] | range) -> int:
        return sum(n for status, n in self.statuses.items() if status in statuses)

    def percentile_ms(self, p: float) -> float:
        """Nearest-rank percentile of the window's latencies, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
        return ordered[rank] * 1000.0

    def merge(self, other: "LoadResult") -> None:
        self.completed += other.completed
        self.latencies.extend(other.latencies)
        self.statuses.update(other.statuses)
        self.all_statuses.update(other.all_statuses)
        self.errors.update(other.errors)
        self.body_bytes += other.body_bytes
        self.client_cpu_s += other.client_cpu_s
        self.spread.update(other.spread)


class ProcessBalancer:
    """Spreads the connections evenly over a pre-fork server's worker processes (Linux).

    A keep-alive connection stays with the worker that accepted it, and a worker woken by a
    burst of connects may accept them all: the other workers would idle through the run. So
    after connecting, connections are re-opened until each worker holds its share, found by
    matching the connections' sockets (/proc/net/tcp) to the workers' file descriptors.
    """

    def __init__(self, port: int, group: int) -> None:
        self.port, self.group = port, group

    def _sockets(self) -> list[tuple[int, int, int]]:
        """(state, remote port, inode) of the sockets whose local port is the server's."""
        rows = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as handle:
                    lines = handle.readlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == self.port:
                    rows.append((int(fields[3], 16), int(fields[2].rsplit(":", 1)[1], 16), int(fields[9])))
        return rows

    def _inodes_of(self, pid: int) -> set[int]:
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except OSError:
            pass
        return inodes

    def _group_pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.group:
                try:
                    with open(f"/proc/{entry}/stat", "rb") as handle:
                        raw = handle.read()
                except OSError:
                    continue
                if int(raw[raw.rfind(b")") + 2:].split()[2]) == self.group:
                    pids.append(int(entry))
        return pids

    def owners(self, client_ports: list[int]) -> tuple[list[int], dict[int, int]]:
        """The worker pids (those holding the listening socket) and the worker of each client port."""
        sockets = self._sockets()
        listening = {inode for state, _, inode in sockets if state == 0x0A}
        by_port = {remote: inode for state, remote, inode in sockets if state == 0x01}
        workers, owner = [], {}
        wanted = {by_port[p]: p for p in client_ports if p in by_port}
        for pid in self._group_pids():
            inodes = self._inodes_of(pid)
            if inodes & listening:
                workers.append(pid)
                for inode in inodes & wanted.keys():
                    owner[wanted[inode]] = pid
        return workers, owner


async def _balance(connections: list[Connection], host: str, port: int, balancer: ProcessBalancer) -> list[Connection]:
    """Re-open connections on the busiest worker until every worker has its share (or give up)."""
    for _ in range(len(connections) * 6):
        workers, owner = [], {}
        for _ in range(100):  # a connect returns before the server accepts: wait until each has its worker
            ports = [c.local_port for c in connections]
            workers, owner = balancer.owners(ports)
            if len(owner) == len(connections) or not workers:
                break
            await asyncio.sleep(0.01)
        if not workers or len(owner) < len(connections):
            break
        counts = Counter({pid: 0 for pid in workers})
        counts.update(owner.values())
        busiest, most = counts.most_common(1)[0]
        if most - min(counts.values()) <= 1:
            break
        index = next(i for i, c in enumerate(connections) if owner.get(c.local_port) == busiest)
        connections[index].close()
        connections[index] = await Connection.open(host, port)
    return connections


def spread(connections: list[Connection], balancer: ProcessBalancer) -> dict[int, int]:
    """Connections per worker pid, as they are now."""
    workers, owner = balancer.owners([c.local_port for c in connections])
    counts = Counter({pid: 0 for pid in workers})
    counts.update(owner.values())
    return dict(counts)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(scenario: Scenario, host: str, port: int, index: int, connection: Connection,
                 clock: dict[str, Any], result: LoadResult) -> None:
    """Keep one connection busy until the window closes; reconnect if the server hangs up."""
    seq = 0
    await _started(clock)
    window_start, window_end = clock["start"], clock["end"]
    perf = time.perf_counter
    latencies = result.latencies
    statuses = result.statuses
    all_statuses = result.all_statuses
    while True:
        sent = perf()
        if sent >= window_end:
            break
        try:
            if connection.closed or connection.must_close:
                connection.close()
                connection = await Connection.open(host, port)
                await scenario.prepare(connection, index)
                sent = perf()
            response = await connection.request(scenario.build(index, seq))
        except (OSError, HttpError) as exc:
            result.errors[type(exc).__name__ if not isinstance(exc, HttpError) else str(exc)[:80]] += 1
            connection.close()
            await asyncio.sleep(0.01)
            continue
        done = perf()
        all_statuses[response.status] += 1
        scenario.record(index, seq, response)
        if window_start <= done < window_end:
            result.completed += 1
            latencies.append(done - sent)
            statuses[response.status] += 1
            result.body_bytes += len(response.body)
        seq += 1
    connection.close()


async def _started(clock: dict[str, Any]) -> None:
    event: asyncio.Event = clock["event"]  # type: ignore[assignment]
    await event.wait()


async def _run_here(scenario: Scenario, host: str, port: int, indexes: range, warmup: float, duration: float,
                    wait_go: Callable[[], Any] | None, on_window: Callable[[str], None] | None,
                    balancer: ProcessBalancer | None) -> LoadResult:
    """The load of this process: open, spread and prepare its connections, then run the window."""
    result = LoadResult(duration=duration, connections=len(indexes), processes=1)
    connections = list(await asyncio.gather(*(Connection.open(host, port) for _ in indexes)))
    if balancer is not None:
        connections = await _balance(connections, host, port, balancer)
    await asyncio.gather(*(scenario.prepare(c, i) for c, i in zip(connections, indexes)))
    if balancer is not None:
        result.spread.update(spread(connections, balancer))
    if wait_go is not None:
        await asyncio.get_running_loop().run_in_executor(None, wait_go)
    clock: dict[str, Any] = {"event": asyncio.Event()}
    tasks = [asyncio.create_task(_drive(scenario, host, port, i, c, clock, result)) for c, i in zip(connections, indexes)]
    now = time.perf_counter()
    clock["start"] = now + warmup
    clock["end"] = now + warmup + duration
    clock["event"].set()
    await asyncio.sleep(warmup)
    if on_window:
        on_window("start")
    cpu_start = _cpu_seconds()
    await asyncio.sleep(max(0.0, clock["end"] - time.perf_counter()))
    result.client_cpu_s = _cpu_seconds() - cpu_start
    if on_window:
        on_window("end")
    done, pending = await asyncio.wait(tasks, timeout=ANSWER_TIMEOUT_S)
    for task in pending:
        task.cancel()
        result.errors["no answer within %.0fs after the window" % ANSWER_TIMEOUT_S] += 1
    for task in done:
        if task.exception() is not None:
            result.errors[f"client: {task.exception()!r}"[:80]] += 1
    result.report = scenario.report()
    return result


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _child(scenario: Scenario, host: str, port: int, indexes: range, warmup: float, duration: float,
           ready: Any, go: Any, results: Any, balancer: ProcessBalancer | None) -> None:
    def wait_go() -> None:
        ready.put(os.getpid())
        go.wait()

    try:
        result = _event_loop_runner()(_run_here(scenario, host, port, indexes, warmup, duration, wait_go, None, balancer))
        results.put(result)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        results.put(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))


def run_load(scenario: Scenario, host: str, port: int, *, connections: int = 32, duration: float = 10.0,
             warmup: float = 2.0, processes: int = 1, on_window: Callable[[str], None] | None = None,
             balancer: ProcessBalancer | None = None) -> LoadResult:
    """Drive `connections` keep-alive connections for `warmup + duration` seconds.

    `on_window("start")` and `on_window("end")` are called in this process when the measured
    window opens and closes (for CPU snapshots). With a `balancer`, the connections are spread
    evenly over the server's worker processes first.
    """
    if processes <= 1:
        result = _event_loop_runner()(_run_here(scenario, host, port, range(connections), warmup, duration, None, on_window,
                                                balancer))
        result.report = scenario.merge_reports([result.report])
        return result
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    share = [range(p, connections, processes) for p in range(processes)]
    children = [context.Process(target=_child, args=(scenario, host, port, indexes, warmup, duration, ready, go, results,
                                                     balancer), daemon=True) for indexes in share]
    try:
        for child in children:
            child.start()
        for _ in children:
            ready.get(timeout=60)
        go.set()
        time.sleep(warmup)
        if on_window:
            on_window("start")
        time.sleep(duration)
        if on_window:
            on_window("end")
        total = LoadResult(duration=duration, connections=connections, processes=processes)
        reports = []
        for _ in children:
            part = results.get(timeout=ANSWER_TIMEOUT_S + 30)
            if isinstance(part, Exception):
                raise part
            total.merge(part)
            reports.append(part.report)
        total.report = scenario.merge_reports(reports)
        return total
    except BaseException:
        for child in children:  # interrupted: no reason to let them finish their window
            if child.is_alive():
                child.terminate()
        raise
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)


def get_request(path: str, host: str, extra: str = "") -> bytes:
    """A keep-alive GET as a browser's first visit would send it (no cookies unless in `extra`)."""
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: leadkiln-bench/1\r\n"
            f"Accept: text/html,application/xhtml+xml\r\nAccept-Encoding: identity\r\n{extra}\r\n").encode()


def post_form(path: str, host: str, body: bytes, extra: str = "") -> bytes:
    """A keep-alive form POST (application/x-www-form-urlencoded)."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: leadkiln-bench/1\r\n"
            f"Accept: text/html,application/xhtml+xml\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body
