"""The `leadkiln` command as a user runs it: clear one-line errors, one demo per data dir, clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from server.embedded import free_port

LEADKILN = [sys.executable, "-m", "server.cli"]
ROOT = Path(__file__).resolve().parents[2]


EMBEDDED_DEFAULTS = ("DATABASE_URL", "REDIS_URL", "SMTP_URL", "PUBLIC_URL", "SECRET_KEY")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            embedded: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `leadkiln`; `embedded` drops the test session's service URLs so the defaults apply."""
    base = {k: v for k, v in os.environ.items() if not (embedded and k in EMBEDDED_DEFAULTS)}
    return subprocess.run([*LEADKILN, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**base, **(env or {})})


@pytest.mark.parametrize("command", ["demo", "serve", "worker", "migrate", "createadmin", "import-leads", "train", "score"])
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    if command in ("demo", "serve"):
        assert "--host" in result.stdout and "--port" in result.stdout
    if command == "demo":
        assert "--data-dir" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/db"),
        ("DATABASE_URL", "sqlite://relative.db"),
        ("DATABASE_URL", "postgres://u@127.0.0.1:notaport/db"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("REDIS_URL", "redis://127.0.0.1:6379/not-a-number"),
        ("SMTP_URL", "imap://mail.example.com"),
        ("SMTP_URL", "smtp://"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
def test_invalid_url_is_one_line_naming_the_variable(command: str, variable: str, value: str, tmp_path: Path) -> None:
    result = run_cli(command, env={variable: value, "DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"leadkiln: {variable}:")


def test_unreachable_database_and_redis_are_named(tmp_path: Path) -> None:
    closed = free_port()
    result = run_cli("migrate", env={"DATABASE_URL": f"postgres://postgres@127.0.0.1:{closed}/nope", "DATA_DIR": str(tmp_path)})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("leadkiln: DATABASE_URL: cannot connect")
    result = run_cli("serve", "--port", str(free_port()),
                     env={"REDIS_URL": f"redis://127.0.0.1:{closed}/0", "DATA_DIR": str(tmp_path),
                          "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("leadkiln: REDIS_URL: cannot connect")


def test_serve_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(port), env={"DATA_DIR": str(tmp_path)})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr


def _children_of(pid: int) -> set[int]:
    """Every descendant process of pid, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_banner(process: subprocess.Popen[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if "admin " in line and "login:" in line:
            return "".join(seen)
    raise AssertionError("demo did not come up:\n" + "".join(seen))


def test_demo_runs_refuses_a_second_copy_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SMTP_URL", "PUBLIC_URL", "SECRET_KEY")}
    env["DATA_DIR"] = str(tmp_path / "ignored")
    data_dir = tmp_path / "demo"
    demo = subprocess.Popen([*LEADKILN, "demo", "--port", str(port), "--data-dir", str(data_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = _wait_for_banner(demo)
        for slug in ("seo", "paid-ads", "analytics"):
            assert f"http://127.0.0.1:{port}/l/{slug}" in banner
        assert (data_dir / "leadkiln.db").exists() and (data_dir / "secret_key").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert response.status == 200
        descendants = _children_of(demo.pid)
        redis_pids = [p for p in descendants if "redis-server" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
        assert redis_pids, "the demo runs an embedded redis-server"

        second = subprocess.run([*LEADKILN, "demo", "--port", str(free_port()), "--data-dir", str(data_dir)], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert "already running" in second.stderr and str(data_dir) in second.stderr

        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in descendants):
            time.sleep(0.2)
        assert not [p for p in descendants if _alive(p)], "no process of the demo is left behind"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_demo_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("demo", "--port", str(port), "--data-dir", str(tmp_path / "demo"), embedded=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert not (tmp_path / "demo" / "leadkiln.db").exists(), "nothing is set up for a demo that cannot start"


def test_serve_and_worker_started_apart_share_one_embedded_redis(tmp_path: Path) -> None:
    from server.embedded import EmbeddedRedis

    url, owner = EmbeddedRedis.reuse_or_start(tmp_path)
    try:
        assert owner is not None and (tmp_path / "embedded-redis.port").exists()
        again, second_owner = EmbeddedRedis.reuse_or_start(tmp_path)
        assert again == url and second_owner is None
    finally:
        owner.stop()
    assert not (tmp_path / "embedded-redis.port").exists()
    assert owner.process is None
