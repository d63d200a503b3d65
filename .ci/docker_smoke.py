"""The WebSocket half of .ci/docker-smoke: a user's login and chat against running containers.

    docker_smoke.py send    BASE CODES EMAIL TEXT   log in, join "general", send TEXT, get its echo
    docker_smoke.py history BASE CODES EMAIL TEXT   log in, join "general": TEXT is in the history
    docker_smoke.py cross   BASE CODES LOGFILE EMAIL EMAIL
                                                    two users on sockets served by two different
                                                    containers: what one sends, the other receives

BASE is the site (http://127.0.0.1:9990). CODES says where login codes are read: "mailpit:URL"
(mailpit's API) or "log:CONTAINER" (`docker logs`, the console mailer). LOGFILE holds
`docker compose logs app`, whose "worker ID subscribed" lines tell which container runs which
worker; the X-Chat-Worker header of a /ws handshake names the worker that serves the socket.
Every wait is bounded; a failure exits non-zero with what was seen. Each login needs an email
address not used in the last minute (the app refuses to resend a code sooner).
"""

import asyncio
import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CODE_WAIT_SECONDS = 30
FRAME_WAIT_SECONDS = 10


def fail(message: str) -> None:
    raise SystemExit(f"FAIL: {message}")


def post(opener: urllib.request.OpenerDirector, base: str, path: str, body: object) -> Any:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Origin": base},
    )
    try:
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        fail(f"POST {path} {body} answered {error.code}: {error.read()[:300]!r}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def read_code(source: str, email: str) -> str:
    kind, _, where = source.partition(":")
    deadline = time.monotonic() + CODE_WAIT_SECONDS
    while time.monotonic() < deadline:
        if kind == "log":
            logs = subprocess.run(
                ["docker", "logs", where], capture_output=True, text=True, timeout=30, check=True
            )
            codes = re.findall(
                rf"mail to {re.escape(email)} \(console mailer\): [^\n]*login code: (\d{{6}})",
                logs.stdout + logs.stderr,
            )
            if codes:
                return str(codes[-1])
        else:
            for summary in get_json(where + "/api/v1/messages")["messages"]:
                if any(to["Address"] == email for to in summary["To"]):
                    mail = get_json(f"{where}/api/v1/message/{summary['ID']}")
                    code = re.search(r"\b(\d{6})\b", mail["Text"])
                    if code:
                        return code.group(1)
        time.sleep(1)
    fail(f"no login code for {email} from {source} within {CODE_WAIT_SECONDS} s")
    raise AssertionError  # unreachable: fail() raises


def login(base: str, source: str, email: str) -> str:
    """The code flow a user goes through; returns the session cookie a browser would send."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    post(opener, base, "/login/code", {"email": email})
    code = read_code(source, email)
    post(opener, base, "/login", {"email": email, "code": code, "next": "/"})
    # Built by hand: the cookie is Secure, which a browser sends to localhost over plain HTTP
    # but http.cookiejar does not.
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
    if not cookie:
        fail(f"logging in {email} set no session cookie")
    print(f"logged in {email} with code {code} from {source.partition(':')[0]}")
    return cookie


def open_socket(base: str, cookie: str) -> Any:
    return connect(
        base.replace("http", "ws", 1) + "/ws",
        open_timeout=10,
        additional_headers={"Cookie": cookie, "Origin": base},
    )


async def next_frame(ws: ClientConnection, wanted: str, **fields: str) -> dict[str, Any]:
    seen = []
    try:
        async with asyncio.timeout(FRAME_WAIT_SECONDS):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == wanted and all(frame.get(k) == v for k, v in fields.items()):
                    return dict(frame)
                seen.append(frame["type"])
    except TimeoutError:
        fail(f"no {wanted!r} frame {fields} within {FRAME_WAIT_SECONDS} s; got {seen}")
    raise AssertionError  # unreachable: fail() raises


async def join(ws: ClientConnection) -> list[dict[str, Any]]:
    await next_frame(ws, "ready")
    await ws.send(json.dumps({"type": "join", "room": "general"}))
    history = await next_frame(ws, "history")
    return list(history["messages"])


async def send(ws: ClientConnection, text: str) -> str:
    client_id = uuid.uuid4().hex
    await ws.send(
        json.dumps({"type": "send", "room": "general", "text": text, "client_id": client_id})
    )
    return client_id


async def send_cmd(base: str, source: str, email: str, text: str) -> None:
    async with open_socket(base, login(base, source, email)) as ws:
        await join(ws)
        message = await next_frame(ws, "message", client_id=await send(ws, text))
        print(f"PASS round trip: sent and received {message['text']!r} (id {message['id']})")


async def history_cmd(base: str, source: str, email: str, text: str) -> None:
    async with open_socket(base, login(base, source, email)) as ws:
        texts = [message["text"] for message in await join(ws)]
        if text not in texts:
            fail(f"{text!r} is not in the history; its last messages: {texts[-5:]}")
        print(f"PASS history: {text!r} is there ({len(texts)} messages)")


def workers_by_container(logfile: str) -> dict[str, str]:
    workers = {}
    with open(logfile) as lines:
        for line in lines:
            found = re.match(r"(\S+)\s*\|.*worker (\w+) subscribed", line)
            if found:
                workers[found.group(2)] = found.group(1)
    return workers


async def cross_cmd(base: str, source: str, logfile: str, *emails: str) -> None:
    workers = workers_by_container(logfile)
    if len(set(workers.values())) < 2:
        fail(f"the app logs name fewer than two containers: {workers}")
    cookies = [login(base, source, email) for email in emails]
    sockets: list[tuple[ClientConnection, str]] = []
    try:
        for cookie in cookies[:2]:
            # The proxy balances by open connections, so a second container comes up soon;
            # bounded all the same.
            for _ in range(12):
                ws = await open_socket(base, cookie)
                assert ws.response is not None
                container = workers.get(ws.response.headers.get("X-Chat-Worker", ""), "?")
                if not sockets or container not in ("?", sockets[0][1]):
                    sockets.append((ws, container))
                    break
                await ws.close()
            else:
                fail("12 sockets in a row were served by the same container")
        for ws, _ in sockets:
            await join(ws)
        (sender, sent_on), (receiver, received_on) = sockets
        text = f"across containers {uuid.uuid4().hex[:8]}"
        message = await next_frame(receiver, "message", client_id=await send(sender, text))
        print(f"PASS across containers: sent on {sent_on}, received on {received_on}: {text!r}")
        assert message["text"] == text
    finally:
        for ws, _ in sockets:
            await ws.close()


COMMANDS = {"send": send_cmd, "history": history_cmd, "cross": cross_cmd}

if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    asyncio.run(COMMANDS[command](*arguments))
