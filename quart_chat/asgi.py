"""Chat frames go straight to the ASGI server, not through `quart.Websocket.send`.

Quart's `send` yields to the event loop (`asyncio.sleep(0)`) and fires a
blinker signal on every call. Fan-out calls it once per recipient per message,
where that was about a third of the worker's CPU (see bench/), so the chat
socket sends with the ASGI `send` callable, which this middleware puts in the
scope of every WebSocket connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

SEND_KEY = "quart_chat.send"

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


class ExposeWebsocketSend:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket":
            # A copy, as ASGI middleware should; the server's scope stays as it was.
            scope = cast(Scope, {**scope, SEND_KEY: send})
        await self.app(scope, receive, send)


def text_sender(scope: Any) -> Callable[[str], Awaitable[None]]:
    """Send one text frame on the accepted WebSocket whose scope this is."""
    send: ASGISendCallable = scope[SEND_KEY]

    async def send_text(frame: str) -> None:
        await send({"type": "websocket.send", "bytes": None, "text": frame})

    return send_text
