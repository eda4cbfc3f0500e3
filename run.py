#!/usr/bin/env python3
"""Bootstrap and run leadkiln from a fresh clone: `python3 run.py demo` or `python3 run.py test`.

Needs only Python 3.11+. Creates `.tools/` (a pinned uv) and `.venv/` (the locked
dependencies from uv.lock), then runs the product or the whole test suite.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOOLS = ROOT / ".tools"
VENV = ROOT / ".venv"
UV_VERSION = "0.13.8"
STAMP = VENV / ".leadkiln-lock-hash"


def say(message: str) -> None:
    print(f"[run.py] {message}", flush=True)


def bin_path(env: Path, name: str) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / name


def ensure_uv() -> Path:
    """A private, pinned uv (from PyPI) that installs the lock file."""
    uv = bin_path(TOOLS, "uv")
    if uv.exists():
        version = subprocess.run([str(uv), "--version"], capture_output=True, text=True).stdout
        if UV_VERSION in version:
            return uv
    say(f"installing uv {UV_VERSION} into .tools/")
    venv.EnvBuilder(with_pip=True, clear=True).create(TOOLS)
    subprocess.run([str(bin_path(TOOLS, "python")), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", f"uv=={UV_VERSION}"], check=True)
    return uv


def ensure_venv() -> None:
    """Install exactly what uv.lock says (with the test extras) unless it is already there."""
    lock = (ROOT / "uv.lock").read_bytes() + (ROOT / "pyproject.toml").read_bytes()
    digest = hashlib.sha256(lock).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest and bin_path(VENV, "leadkiln").exists():
        return
    uv = ensure_uv()
    say("installing the locked dependencies into .venv/ (first run only)")
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(VENV), UV_PYTHON_DOWNLOADS="never")
    subprocess.run([str(uv), "sync", "--frozen", "--all-extras", "--python", sys.executable],
                   cwd=ROOT, env=env, check=True)
    STAMP.write_text(digest)


CHROMIUM = Path("/usr/bin/chromium")


def ensure_browser() -> None:
    """The browser tests drive Debian's chromium; install it where we may (root with apt)."""
    if CHROMIUM.exists():
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing Debian's chromium for the browser tests (apt-get install -y chromium)")
        quiet = {"stdout": subprocess.DEVNULL, "env": os.environ | {"DEBIAN_FRONTEND": "noninteractive"}}
        if subprocess.run(["apt-get", "install", "-y", "chromium"], **quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "chromium"], **quiet)
    if not CHROMIUM.exists():
        say(f"no browser at {CHROMIUM}: the tests in tests/e2e will be skipped (install Debian's chromium)")


def run_tests(args: list[str]) -> int:
    """Unit, integration, CLI and browser tests on SQLite, then the integration tests on PostgreSQL."""
    python = str(bin_path(VENV, "python"))
    base = [python, "-m", "pytest", "-p", "no:cacheprovider"]
    if args:
        return subprocess.run(base + args, cwd=ROOT).returncode
    ensure_browser()
    runs = [
        ("SQLite", ["tests", "--db=sqlite"]),
        ("PostgreSQL", ["tests/integration", "--db=postgres"]),
    ]
    failed = []
    for name, extra in runs:
        say(f"test run on {name}: pytest {' '.join(extra)}")
        code = subprocess.run(base + extra, cwd=ROOT).returncode
        if code != 0:
            failed.append(name)
    if failed:
        say(f"FAILED on: {', '.join(failed)}")
        return 1
    say("all test runs passed (SQLite and PostgreSQL)")
    return 0


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):
        print("leadkiln needs Python 3.11 or newer", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("usage: python3 run.py demo [leadkiln demo options] | test [pytest args] | leadkiln [args]")
        return 0 if argv else 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "test":
        return run_tests(rest)
    if command == "leadkiln":
        command, rest = (rest[0], rest[1:]) if rest else ("--help", [])
    leadkiln = str(bin_path(VENV, "leadkiln"))
    os.execv(leadkiln, [leadkiln, command, *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
