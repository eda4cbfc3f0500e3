"""A counting SMTP sink for benchmarks: aiosmtpd in its own process, one log line per accepted letter.

    .venv/bin/python -m bench.smtp_sink --port 2525 --log /tmp/sink.log

Each letter it accepts becomes a line `MONOTONIC_SECONDS MESSAGE_ID RCPT[,RCPT…]`, written
before the 250 reply goes out; CLOCK_MONOTONIC is one clock for every process on the
machine, so a parent can compare these times with its own `time.monotonic()`. The letter
itself is dropped. In a process of its own, the sink shares neither the event loop nor the
GIL of the client it measures. `Sink` starts and stops it from a parent process.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)


class CountingHandler:
    """aiosmtpd handler: logs the time, Message-ID and recipients of each letter, keeps nothing else."""

    def __init__(self, log) -> None:
        self.log = log

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        received = time.monotonic()
        content: bytes = envelope.original_content or envelope.content or b""
        head = content[:content.find(b"\r\n\r\n")] if b"\r\n\r\n" in content else content[:8192]
        found = MESSAGE_ID.search(head)
        message_id = found.group(1).decode(errors="replace") if found else "-"
        self.log.write(f"{received:.6f} {message_id} {','.join(envelope.rcpt_tos) or '-'}\n")
        return "250 2.0.0 accepted"


async def serve(port: int, log_path: Path) -> None:
    from aiosmtpd.smtp import SMTP

    # Line buffered: a parent polling the file sees each letter as it is accepted.
    log = open(log_path, "a", buffering=1)
    handler = CountingHandler(log)
    loop = asyncio.get_running_loop()
    # A fixed hostname: aiosmtpd would otherwise ask the resolver for this machine's FQDN.
    server = await loop.create_server(lambda: SMTP(handler, hostname="bench-sink.localhost", ident="bench-sink"),
                                      host="127.0.0.1", port=port, backlog=512)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_sink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True, help="file that gets one line per accepted letter")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop of the sink (default uvloop when installed: the sink should not be the bottleneck)")
    args = parser.parse_args(argv)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if args.loop == "uvloop":
        try:
            import uvloop

            uvloop.run(serve(args.port, args.log))
            return 0
        except ImportError:
            pass
    asyncio.run(serve(args.port, args.log))
    return 0


# The parent's side


@dataclass(frozen=True)
class Accepted:
    """One letter the sink accepted."""

    at: float
    """time.monotonic() in the sink when it accepted the letter."""
    message_id: str
    recipients: tuple[str, ...]


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Sink:
    """The sink as a child process of the caller, and its log read back from any offset."""

    def __init__(self, log_path: Path, port: int, loop: str = "uvloop") -> None:
        self.log_path = log_path
        self.port = port
        self.loop = loop
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 20.0) -> "Sink":
        self.log_path.touch()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.smtp_sink", "--port", str(self.port), "--log", str(self.log_path),
             "--loop", self.loop],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=None, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True, preexec_fn=_die_with_parent)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.process.stdout.readline()  # "ready PORT", or "" if it died
        if not line.startswith("ready") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"the SMTP sink did not start on port {self.port}: {line.strip() or 'no output'}")
        return self

    def offset(self) -> int:
        """Where the log ends now: read from here to see only later letters."""
        return self.log_path.stat().st_size

    def accepted(self, since: int = 0) -> list[Accepted]:
        """Every complete log line after byte `since`, in order."""
        with open(self.log_path, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
        letters = []
        for line in text.split("\n")[:-1]:  # the last piece is empty or a line still being written
            at, message_id, recipients = line.split(" ", 2)
            letters.append(Accepted(float(at), message_id, tuple(recipients.split(","))))
        return letters

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
