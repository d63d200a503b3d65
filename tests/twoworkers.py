"""Two-worker servers for tests: `quart-chat serve --workers 2` on a private Redis, real
WebSocket clients logged in directly, and the fixtures every such test module shares.

A module asks for its servers with the fixture factories, for example::

    redis_server = redis_server_fixture("hb-redis")
    server = chat_server_fixture("hb-chat", CHAT_WS_IDLE_TIMEOUT_SECONDS="2")
    redis = redis_client_fixture()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from quart_auth.extension import _AuthSerializer
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from quart_chat.models.sessions import create_session
from quart_chat.models.users import get_or_create_user

from .servers import Caddy, ChatServer, RedisServer

SECRET = "multiworker-secret-" + "k" * 32
WAIT = 15.0


def redis_server_fixture(name: str, *, appendonly: bool = False) -> Any:
    """A module's own redis-server, so tests can restart it or read its CLIENT LIST."""

    @pytest.fixture(scope="module")
    def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        server = RedisServer(tmp_path_factory.mktemp(name), appendonly=appendonly).start()
        try:
            yield server
        finally:
            server.stop()

    return redis_server


def chat_server_fixture(name: str, **settings: str) -> Any:
    """`quart-chat serve --workers 2` on the module's `redis_server`, with these settings."""

    @pytest.fixture(scope="module")
    def server(
        redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[ChatServer]:
        env = server_env(redis_server, **settings)
        chat = ChatServer(tmp_path_factory.mktemp(name), env=env, workers=2).start()
        try:
            yield chat
        finally:
            chat.stop()

    return server


def redis_client_fixture(prepare: Callable[[Redis], Any] | None = None) -> Any:
    """A client of the module's `redis_server` for one test."""

    @pytest.fixture
    async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
        client = Redis.from_url(redis_server.url)
        if prepare is not None:
            await prepare(client)
        try:
            yield client
        finally:
            await client.aclose()

    return redis


def server_env(redis_server: RedisServer, **settings: str) -> dict[str, str]:
    return {
        "CHAT_REDIS_URL": redis_server.url,
        "CHAT_SECRET_KEY": SECRET,
        "CHAT_COOKIE_SECURE": "false",
        # Senders here flood on purpose; the limit has its own test.
        "CHAT_MESSAGES_PER_MINUTE": "1000000",
        **settings,
    }


class Person:
    def __init__(self, server: ChatServer | Caddy, user_id: str, session_id: str) -> None:
        self.server = server
        self.user_id = user_id
        self.session_id = session_id
        token = _AuthSerializer(SECRET, "quart auth salt").dumps(session_id)
        self.cookie = f"QUART_AUTH={token}"
        # Handshakes that failed and were retried, which a browser would show.
        self.failed_handshakes = 0

    async def open(self, patience: float = 0, **options: Any) -> ClientConnection:
        """Connect and read `ready`; with patience, retry while the server answers 503,
        or is stopping: it drops the handshake or closes the socket at once."""
        deadline = asyncio.get_running_loop().time() + patience
        while True:
            try:
                ws = await connect(
                    self.server.base_url.replace("http", "ws") + "/ws",
                    additional_headers={"Cookie": self.cookie},
                    proxy=None,
                    open_timeout=WAIT,
                    **options,
                )
            except (InvalidHandshake, OSError):
                self.failed_handshakes += 1
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            try:
                ready = await receive(ws)
            except ConnectionClosed:
                self.failed_handshakes += 1
                if asyncio.get_running_loop().time() > deadline:
                    raise
                continue
            assert ready["type"] == "ready"
            return ws


async def log_in(redis: Redis, server: ChatServer | Caddy, name: str | None = None) -> Person:
    email = f"{name or secrets.token_hex(4)}@example.com"
    user = await get_or_create_user(redis, email)
    return Person(server, user.id, await create_session(redis, user, 3600))


def worker(ws: ClientConnection) -> str:
    assert ws.response is not None
    return ws.response.headers["X-Chat-Worker"]


async def on_two_workers(one: Person, two: Person) -> tuple[ClientConnection, ClientConnection]:
    """Sockets for `one` and `two` that are served by different worker processes."""
    first = await one.open()
    # The kernel hands each connection to whichever worker is waiting in accept();
    # on a loaded machine one worker can win many times in a row.
    for _ in range(200):
        second = await two.open()
        if worker(second) != worker(first):
            return first, second
        await second.close()
        await asyncio.sleep(0.02)
    raise AssertionError("the kernel never handed a connection to the second worker")


async def receive(ws: ClientConnection, timeout: float = WAIT) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def close_code(ws: ClientConnection, timeout: float = WAIT) -> int | None:
    """Read until the server closes the socket; the code it sent."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return ws.close_code


# -- tabs: sockets that ask with a ref and wait for frames --------------------------------

_refs = itertools.count()


class Tab:
    """A socket and the frames read from it while looking for others."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.held: list[dict[str, Any]] = []

    @property
    def worker(self) -> str:
        return worker(self.ws)

    async def next(self) -> dict[str, Any]:
        return self.held.pop(0) if self.held else await receive(self.ws)

    async def ask(self, frame: dict[str, Any]) -> dict[str, Any]:
        ref = f"ref-{next(_refs)}"
        await self.ws.send(json.dumps({**frame, "ref": ref}))
        skipped = []
        while True:
            answer = await receive(self.ws)
            if answer.get("ref") == ref:
                self.held += skipped
                return answer
            skipped.append(answer)

    async def until(
        self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda f: True
    ) -> list[dict[str, Any]]:
        """Frames up to and including the first of `kind` for which `where` holds."""
        seen = []
        while True:
            frame = await self.next()
            if frame["type"] == "presence":
                continue
            seen.append(frame)
            if frame["type"] == kind and where(frame):
                return seen

    async def send(self, room: str, text: str) -> None:
        frame = {"type": "send", "room": room, "text": text, "client_id": text}
        await self.ws.send(json.dumps(frame))


async def tabs_on_two_workers(one: Person, two: Person) -> tuple[Tab, Tab]:
    first, second = await on_two_workers(one, two)
    return Tab(first), Tab(second)


async def create_room(tab: Tab, name: str, **extra: Any) -> str:
    reply = await tab.ask({"type": "room_create", "kind": "private", "name": name, **extra})
    assert reply["type"] == "room", reply
    room_id: str = reply["room"]["id"]
    return room_id


async def join(tab: Tab, room: str) -> list[str]:
    reply = await tab.ask({"type": "join", "room": room})
    assert reply["type"] == "history", reply
    return [m["id"] for m in reply["messages"]]
