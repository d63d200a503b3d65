"""The README's "Run it" command, run exactly as written, as a new user runs it.

In a fresh copy of the repository (what a clone has: no .venv, no var/), with no
`CHAT_*` variable at all: the embedded Redis on its Unix socket, the console
mailer, a generated secret and the default (Secure) cookie. Two people log in
through the system Chromium with the codes from the server's log, on different
workers, chat both ways, reload and see the history; SIGTERM to the launcher
leaves no process behind. The command and the address are read from README.md,
so when the README changes, this test changes with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from websockets.sync.client import connect

from ..readme import README, command
from ..servers import process_alive, wait_for
from .conftest import message_texts, unique

REPO = README.parent
# pip installs the package into a new virtualenv first: minutes on a slow mirror.
START_SECONDS = 600


def readme_address() -> tuple[str, int]:
    """Where the README says the server is, from the "Then open <...>" after "Run it"."""
    match = re.search(r"^Then open <http://([\d.]+):(\d+)>", README.read_text(), re.M)
    assert match, "README.md: no 'Then open <http://HOST:PORT>' line"
    return match.group(1), int(match.group(2))


def fresh_copy(target: Path) -> Path:
    """The files a clone would have (tracked plus new, not ignored): no .venv, no var/."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def user_environment() -> dict[str, str]:
    """This environment as a new user's shell would have it: no CHAT_*, no virtualenv."""
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CHAT_") and key not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    }
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if part != venv_bin
    )
    return env


def require_free_port(host: str, port: int) -> None:
    with socket.socket() as sock:
        # As a server binds: connections in TIME_WAIT do not make a port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            pytest.fail(
                f"{host}:{port}, where the README's command serves, is taken ({error}): "
                "stop whatever listens there and run this test again"
            )


def process_tree(root: int) -> dict[int, str]:
    """pid -> command line of `root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tree[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return tree


class ReadmeServer:
    """The README's command as a subprocess of /bin/sh, with its output in a log file."""

    def __init__(self, workdir: Path, host: str, port: int) -> None:
        self.workdir = workdir
        self.address = (host, port)
        self.base_url = f"http://{host}:{port}"
        self.log_path = workdir.parent / "readme-server.log"
        self.shell: subprocess.Popen[bytes] | None = None
        # Everything the command started, as last seen: for the checks and the clean-up.
        self.processes: dict[int, str] = {}

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.shell = subprocess.Popen(
                command("Run it"),
                shell=True,
                cwd=self.workdir,
                env=user_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self) -> None:
        assert self.shell is not None
        shell = self.shell

        def serving() -> bool:
            if shell.poll() is not None:
                raise AssertionError(f"the command exited {shell.returncode}:\n{self.log()}")
            # The launcher binds the port before its workers start: a connection
            # is accepted early, so ask a worker, as a user's first request would.
            host, port = self.address
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        wait_for(serving, timeout=START_SECONDS, interval=0.5, what="the README's server")
        self.processes = process_tree(shell.pid)

    def launcher(self) -> int:
        """The `quart-chat serve` process (the shell may have exec'd into it)."""
        found = [
            pid
            for pid, cmd in self.processes.items()
            if "quart-chat serve" in cmd and not cmd.startswith("/bin/sh -c")
        ]
        assert found, f"no 'quart-chat serve' among {self.processes}"
        return min(found)  # the launcher starts before its workers

    def code_for(self, email: str, count: int) -> str:
        pattern = re.compile(
            rf"mail to {re.escape(email)} \(console mailer\): [^\n]*login code: (\d{{6}})"
        )

        def arrived() -> list[str]:
            codes = pattern.findall(self.log())
            return codes if len(codes) >= count else []

        return wait_for(arrived, what=f"login code {count} for {email} in the log")[count - 1]  # type: ignore[no-any-return]


@pytest.fixture
def readme_server(tmp_path: Path) -> Iterator[ReadmeServer]:
    host, port = readme_address()
    require_free_port(host, port)
    server = ReadmeServer(fresh_copy(tmp_path / "quart-chat"), host, port)
    server.start()
    assert server.shell is not None
    try:
        yield server
    finally:
        # Whatever the test left running (it failed half-way), ended by pid.
        left = {**server.processes, **process_tree(server.shell.pid)}
        for pid in left:
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        server.shell.wait(30)


def log_in(browser: Browser, server: ReadmeServer, email: str) -> tuple[Page, list[str]]:
    """A person's login through the page, with the code from the server's log; also returns
    the `X-Chat-Worker` of every chat socket the page opens, in order."""
    context = browser.new_context()
    page = context.new_page()
    workers: list[str] = []
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.on(
        "Network.webSocketHandshakeResponseReceived",
        lambda event: workers.append(
            {k.lower(): v for k, v in event["response"]["headers"].items()}["x-chat-worker"]
        ),
    )
    page.goto(server.base_url + "/login")
    expect(page.locator("#insecure-cookie")).to_have_count(0)
    codes_before = len(
        re.findall(
            rf"mail to {re.escape(email)} \(console mailer\): [^\n]*login code:", server.log()
        )
    )
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Send code").click()
    page.get_by_label("Code").fill(server.code_for(email, codes_before + 1))
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(server.base_url + "/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    session = [cookie for cookie in context.cookies() if cookie["httpOnly"]]
    assert session and all(cookie["secure"] for cookie in session), session
    return page, workers


def worker_ids(server: ReadmeServer, page: Page, sockets: int) -> set[str]:
    """The workers that answer `sockets` WebSocket handshakes with this page's session."""
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    url = server.base_url.replace("http", "ws", 1) + "/ws"
    headers = {"Cookie": cookies, "Origin": server.base_url}
    seen = set()
    for _ in range(sockets):
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            assert ws.response is not None
            seen.add(ws.response.headers["X-Chat-Worker"])
    return seen


def say(page: Page, text: str) -> None:
    box = page.get_by_label("Message #general")
    box.fill(text)
    box.press("Enter")


def shown_once(page: Page, text: str) -> None:
    item = page.locator("#messages > li[data-id]").filter(
        has=page.locator(".msg-text").get_by_text(text, exact=True)
    )
    expect(item).to_have_count(1)


@pytest.mark.timeout(START_SECONDS + 300)
def test_the_readme_run_command_works_for_two_people(
    readme_server: ReadmeServer, browser: Browser
) -> None:
    server = readme_server
    server.wait_serving()
    data = server.workdir / "var"
    assert (data / "redis" / "redis.sock").is_socket(), "the embedded Redis is not on its socket"
    assert (data / "secret_key").stat().st_mode & 0o777 == 0o600
    log = server.log()
    assert "CHAT_SMTP_HOST is not set" in log
    assert "CHAT_REDIS_URL is not set: started the embedded Redis" in log

    alice, alice_sockets = log_in(browser, server, "alice@example.test")
    # The README: "--workers ... (default: CPU count)".
    expected_workers = os.cpu_count() or 1
    assert len(worker_ids(server, alice, 40)) == expected_workers, server.log()

    # Across workers: bob's page reloads until its socket is on another one than alice's.
    bob, bob_sockets = log_in(browser, server, "bob@example.test")
    for _ in range(30):
        if expected_workers < 2 or bob_sockets[-1] != alice_sockets[-1]:
            break
        opened = len(bob_sockets)
        bob.reload()
        expect(bob.locator("#connection")).to_have_attribute("data-state", "connected")
        wait_for(lambda: len(bob_sockets) > opened, what="bob's new socket")  # noqa: B023
    assert expected_workers < 2 or bob_sockets[-1] != alice_sockets[-1], bob_sockets

    hello = unique("hello bob")
    say(alice, hello)
    shown_once(bob, hello)
    reply = unique("hi alice")
    say(bob, reply)
    shown_once(alice, reply)
    alice.reload()
    shown_once(alice, hello)
    shown_once(alice, reply)
    texts = message_texts(alice)
    assert texts.index(hello) < texts.index(reply)

    assert server.shell is not None
    tree = server.processes = process_tree(server.shell.pid)
    assert any("redis-server" in cmd for cmd in tree.values()), tree
    os.kill(server.launcher(), signal.SIGTERM)
    server.shell.wait(60)
    left = {pid: cmd for pid, cmd in tree.items() if process_alive(pid)}
    for _ in range(100):
        if not left:
            break
        time.sleep(0.1)
        left = {pid: cmd for pid, cmd in left.items() if process_alive(pid)}
    assert not left, f"still running after the launcher exited: {left}\n{server.log()}"
    require_free_port(*readme_address())
