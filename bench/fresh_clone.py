"""The README's two commands on a fresh clone with an empty package cache, timed.

    python3 bench/fresh_clone.py               # both commands
    python3 bench/fresh_clone.py --demo-only   # only `python3 run.py demo`
    python3 bench/fresh_clone.py --demo-only --whole-chain   # and wait for two whole chains

Clones this repository's HEAD into a temporary folder, points uv at an empty cache there,
then times `python3 run.py test` (exit code and wall time) and `python3 run.py demo`: the
seconds until its banner, then a form submission on /l/seo and the seconds until the first
letter is in the mail catcher, then SIGTERM and a check that no process of the clone is left.
With `--whole-chain`, two more visitors sign up on /l/seo: one downloads the ebook from its
letter (a `download` event: hot), the other does not (cold); the run waits for both chains
(five letters a minute apart) and prints each letter as it arrives, ending in the offer.
Needs only Python, git, and the services `run.py test` uses (or starts).
"""

from __future__ import annotations

import argparse
import http.cookiejar
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SMTP_URL", "DATA_DIR", "PUBLIC_URL", "SECRET_KEY")


def fresh_clone(into: Path) -> dict[str, str]:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(into)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    return env | {"UV_CACHE_DIR": str(into / ".uv-cache-empty")}


def time_tests(clone: Path, env: dict[str, str]) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "run.py", "test"], cwd=clone, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    summary = [line for line in result.stdout.splitlines() if " passed" in line or "failed" in line or "[run.py]" in line]
    print(f"python3 run.py test: exit {result.returncode} after {seconds:.1f} s")
    for line in summary:
        print(f"  {line.strip()}")


def _letters(mail: Path) -> list[dict[str, str]]:
    import email
    import email.policy

    found = []
    for path in sorted(mail.glob("*.eml")) if mail.is_dir() else []:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = message.get_body(("plain",))
        found.append({"to": str(message["To"]), "subject": str(message["Subject"]), "id": str(message["Message-ID"]),
                      "text": body.get_content() if body is not None else "", "file": path.name})
    return found


def _sign_up(browser: urllib.request.OpenerDirector, port: int, address: str) -> int:
    page = browser.open(f"http://127.0.0.1:{port}/l/seo").read().decode()
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page)
    form = urllib.parse.urlencode({"_csrf_token": token.group(1) if token else "", "email": address,
                                   "first_name": address.split("@")[0].title(), "consent": "on"}).encode()
    return browser.open(urllib.request.Request(f"http://127.0.0.1:{port}/l/seo", data=form)).status


def whole_chains(mail: Path, port: int, started: float) -> None:
    """Two visitors, hot and cold: every letter of both chains, in order, with its time."""
    visitors = {"hot.reader@example.com": True, "cold.reader@example.com": False}
    for address in visitors:
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        print(f"  {time.monotonic() - started:6.1f} s  {address} signs up: {_sign_up(browser, port, address)}")
    downloaded: set[str] = set()
    seen: set[str] = set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for letter in _letters(mail):
            if letter["to"] not in visitors or letter["file"] in seen:
                continue
            seen.add(letter["file"])
            kind = "chain" if not letter["id"].startswith("<lk.n") else "notice"
            print(f"  {time.monotonic() - started:6.1f} s  {letter['to']:24} {kind:6} {letter['subject']}")
            link = re.search(r"(http://\S+/d/\S+)", letter["text"])
            if link and visitors[letter["to"]] and letter["to"] not in downloaded:
                status = urllib.request.urlopen(link.group(1)).status
                downloaded.add(letter["to"])
                print(f"  {time.monotonic() - started:6.1f} s  {letter['to']:24} downloads the ebook: {status}")
        chain_letters = [x for x in _letters(mail) if x["to"] in visitors and not x["id"].startswith("<lk.n")]
        if len(chain_letters) >= 10:
            break
        time.sleep(0.5)
    for address, hot in visitors.items():
        last = [x for x in _letters(mail) if x["to"] == address and not x["id"].startswith("<lk.n")]
        final = last[-1]["subject"] if last else "(none)"
        print(f"  {address}: {len(last)} chain letters; last: {final!r} (expected the {'hot' if hot else 'cold'} offer)")


def time_demo(clone: Path, env: dict[str, str], port: int, whole_chain: bool = False) -> None:
    started = time.monotonic()
    demo = subprocess.Popen([sys.executable, "run.py", "demo", "--port", str(port)], cwd=clone, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    banner = None
    assert demo.stdout is not None
    for line in demo.stdout:
        lines.append(line)
        if "leadkiln demo is running" in line:
            banner = time.monotonic() - started
            break
    if banner is None:
        print("python3 run.py demo: no banner\n" + "".join(lines[-30:]))
        return
    threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True).start()  # type: ignore[arg-type]
    print(f"python3 run.py demo: banner after {banner:.1f} s")

    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = browser.open(f"http://127.0.0.1:{port}/l/seo").read().decode()
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page)
    mail = clone / "leadkiln-data" / "mail"
    before = set(os.listdir(mail)) if mail.is_dir() else set()
    posted = time.monotonic()
    form = urllib.parse.urlencode({"_csrf_token": token.group(1) if token else "", "email": "fresh.clone@example.com",
                                   "consent": "on"}).encode()
    status = browser.open(urllib.request.Request(f"http://127.0.0.1:{port}/l/seo", data=form)).status
    arrived = None
    while time.monotonic() - posted < 60:
        if mail.is_dir() and set(os.listdir(mail)) - before:
            arrived = time.monotonic() - posted
            break
        time.sleep(0.05)
    print(f"  form POST /l/seo: {status}; first letter in the catcher "
          + (f"{arrived:.2f} s later" if arrived is not None else "NOT within 60 s"))
    if whole_chain:
        whole_chains(mail, port, time.monotonic())

    demo.send_signal(signal.SIGTERM)
    code = demo.wait(timeout=30)
    time.sleep(1)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    left = [line for line in ps.splitlines() if str(clone) in line and "fresh_clone" not in line]
    print(f"  SIGTERM: exit {code}; processes of the clone left: {left or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-only", action="store_true")
    parser.add_argument("--port", type=int, default=8899)
    parser.add_argument("--whole-chain", action="store_true", help="wait for two whole chains (about 5 minutes)")
    args = parser.parse_args()
    for label, wanted in (("test", not args.demo_only), ("demo", True)):
        if not wanted:
            continue
        folder = Path(tempfile.mkdtemp(prefix="leadkiln-fresh-"))
        try:
            env = fresh_clone(folder / "leadkiln")
            if label == "test":
                time_tests(folder / "leadkiln", env)
            else:
                time_demo(folder / "leadkiln", env, args.port, args.whole_chain)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
