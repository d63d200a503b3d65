"""The Quart subclass that carries this app's settings, Redis pool and chat hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from quart import Quart, current_app

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .config import Settings
    from .realtime.hub import ChatHub


class ChatApp(Quart):
    settings: Settings
    # Set in `before_serving`, closed in `after_serving`; never per request.
    redis: Redis
    # The worker's pub/sub listener, presence, history and mail outbox drainer.
    hub: ChatHub


def get_app() -> ChatApp:
    return cast(ChatApp, current_app)
