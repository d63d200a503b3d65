"""The chat WebSocket, `/ws`, served at the ASGI level; everything else goes to Quart.

A chat socket spends nearly all its life idle, and a worker holds thousands, so
what each one keeps alive sets the server's memory. Through Quart, a socket
cost two extra tasks, a second receive queue, a request context and a parsed
copy of its headers on top of what Hypercorn and the chat itself keep (about
38 KiB in all, bench/). Here the handshake is checked from the ASGI scope,
frames are read straight from the server's `receive` and written to the
socket's transport (`wire.py`; its `send` where that cannot be done), and the
server's task for the connection is the one that serves it.

The handshake is authorised before it is accepted, like a Campfire channel
subscription: no session is HTTP 401, a cross-site Origin is HTTP 403
(cross-site WebSocket hijacking), a user or address with too many sockets
open is HTTP 429, and a worker that has lost Redis answers 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart_auth import QuartAuth
from redis.exceptions import RedisError
from werkzeug.datastructures import Headers
from werkzeug.http import parse_cookie
from werkzeug.sansio.utils import get_host

from ..base import ChatApp
from ..errors import APIError
from ..models.sessions import load_session
from ..models.users import User
from ..security import is_allowed_origin
from ..socketcaps import SocketCapReached, address_key
from ..storage import Throttled
from .connection import ChatConnection
from .outbox import CLOSE_SERVER_ERROR
from .wire import open_wire

log = logging.getLogger(__name__)
_refused_unavailable = Throttled(log)

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Coroutine[Any, Any, None]]

CHAT_SOCKET_PATH = "/ws"
# Wait this long for a slow client to take the close frame, then let it go.
CLOSE_TIMEOUT_SECONDS = 5.0
# Harmless to expose: a random id per worker process, which shows in tests
# and load balancer logs which worker serves a socket.
WORKER_HEADER = "X-Chat-Worker"


class ChatSocketRoute:
    """ASGI middleware in front of Quart that serves the chat WebSocket itself."""

    def __init__(self, app: ChatApp, auth: QuartAuth, inner: ASGIApp) -> None:
        self.app = app
        self.auth = auth
        self.inner = inner
        if auth.cookie_name is None:
            raise ValueError("QuartAuth(app) must run before the route is made")
        self.cookie_name: str = auth.cookie_name

    def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> Coroutine[Any, Any, None]:
        # Not a coroutine itself: its frame would stay alive under every idle socket.
        if scope["type"] == "websocket" and scope["path"] == CHAT_SOCKET_PATH:
            return self.serve(cast(dict[str, Any], scope), receive, send)
        return self.inner(scope, receive, send)

    async def serve(
        self, scope: dict[str, Any], receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        address = address_key((scope.get("client") or ("",))[0])
        try:
            user, session_id = await self.authorise(scope)
            await self.admit(user, address)
        except APIError as refusal:
            await refuse(scope, send, refusal, self.app.hub.worker_id)
            return
        hub = self.app.hub
        try:
            worker = (WORKER_HEADER.lower().encode(), hub.worker_id.encode())
            await send({"type": "websocket.accept", "subprotocol": None, "headers": [worker]})
            try:
                connection = ChatConnection(hub, user, session_id, send, receive, open_wire(send))
                code = await connection.serve()
            except Exception:
                log.exception("chat WebSocket failed")
                code = CLOSE_SERVER_ERROR
            if code is not None:
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                        await send({"type": "websocket.close", "code": code, "reason": None})
                except TimeoutError:
                    pass
        finally:
            hub.socket_caps.release(user.id, address)

    async def admit(self, user: User, address: str | None) -> None:
        """Count the socket against the per-user and per-address caps, or `APIError` (429).

        One Redis round trip; an admitted socket is released when it ends.
        """
        try:
            await self.app.hub.socket_caps.admit(user.id, address)
        except SocketCapReached as reached:
            raise APIError.retry_later(429, reached.code, reached.retry_after) from None
        except (RedisError, OSError):
            raise APIError(503, "unavailable") from None

    async def authorise(self, scope: dict[str, Any]) -> tuple[User, str]:
        """The session's user and id, or `APIError`."""
        app = self.app
        headers = Headers(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
        )
        scheme: str = scope["scheme"]
        host = get_host(scheme, headers.get("Host"), scope.get("server"))
        if not is_allowed_origin(headers, scheme, host, app.settings.allowed_origins):
            raise APIError(403, "origin_not_allowed")
        token = parse_cookie(headers.get("Cookie")).get(self.cookie_name)
        session_id = None if token is None else self.auth.load_token(token, app)
        if session_id is None:
            raise APIError(401, "unauthorized")
        try:
            user = await load_session(app.hub.pipelined, session_id)
        except (RedisError, OSError) as error:
            _refused_unavailable.warning("WebSocket refused with 503: Redis failed: %s", error)
            raise APIError(503, "unavailable") from None
        if user is None:
            raise APIError(401, "unauthorized")
        if not app.hub.bus.subscribed:
            _refused_unavailable.warning("WebSocket refused with 503: pub/sub is not subscribed")
            raise APIError(503, "unavailable")
        return user, session_id


async def refuse(
    scope: dict[str, Any], send: ASGISendCallable, refusal: APIError, worker_id: str
) -> None:
    """Answer the handshake with an HTTP status and a JSON body, where the server can."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        # Without the extension a close before accept is all ASGI offers (HTTP 403).
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.code})
        return
    headers = [
        (b"content-type", b"application/json"),
        (WORKER_HEADER.lower().encode(), worker_id.encode()),
        *((name.lower().encode(), value.encode()) for name, value in refusal.headers.items()),
    ]
    body = json.dumps(refusal.body()).encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send(
        {
            "type": "websocket.http.response.start",
            "status": refusal.status,
            "headers": headers,
        }
    )
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
