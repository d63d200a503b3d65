"""The chat page and the chat WebSocket (SPEC §5).

The handshake is authorised before it is accepted, like a Campfire channel
subscription: no session is HTTP 401, a cross-site Origin is HTTP 403
(cross-site WebSocket hijacking), and a worker that has lost Redis answers 503.
"""

from __future__ import annotations

import asyncio
from typing import cast

from quart import Blueprint, redirect, render_template, websocket
from quart_auth import current_user
from redis.exceptions import RedisError
from werkzeug.wrappers import Response as WerkzeugResponse

from ..asgi import text_sender
from ..base import get_app
from ..connection import ChatConnection
from ..security import is_allowed_origin
from ..sessions import SessionUser

blueprint = Blueprint("chat", __name__)

# Wait this long for a slow client to take the close frame, then let it go.
CLOSE_TIMEOUT_SECONDS = 5.0
# Harmless to expose: a random id per worker process, which shows in tests
# and load balancer logs which worker serves a socket.
WORKER_HEADER = "X-Chat-Worker"


@blueprint.get("/")
async def index() -> str | WerkzeugResponse:
    user = await cast(SessionUser, current_user).load()
    if user is None:
        return redirect("/login?next=/")
    return await render_template("chat.html", user=user.public())


@blueprint.websocket("/ws")
async def chat_socket() -> tuple[dict[str, str], int] | None:
    app = get_app()
    if not is_allowed_origin(
        websocket.headers, websocket.scheme, websocket.host, app.settings.allowed_origins
    ):
        return {"error": "origin_not_allowed"}, 403
    auth = cast(SessionUser, current_user)
    try:
        user = await auth.load()
    except (RedisError, OSError):
        return {"error": "unavailable"}, 503
    if user is None or auth.auth_id is None:
        return {"error": "unauthorized"}, 401
    hub = app.hub
    if not hub.broker.subscribed:
        return {"error": "unavailable"}, 503

    await websocket.accept(headers={WORKER_HEADER: hub.broker.worker_id})
    send = text_sender(websocket.scope)
    connection = ChatConnection(hub, user, auth.auth_id, send, websocket.receive)
    code = await connection.serve()
    if code is not None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await websocket.close(code)
        except TimeoutError:
            pass
    return None
