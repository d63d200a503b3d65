"""Operational endpoints: the health check used by Docker and load balancers."""

from __future__ import annotations

import asyncio

from quart import Blueprint
from redis.exceptions import RedisError

from ..base import get_app

blueprint = Blueprint("ops", __name__)

HEALTH_TIMEOUT_SECONDS = 2


@blueprint.get("/healthz")
async def healthz() -> tuple[dict[str, str], int]:
    """Healthy only if this worker can serve chat: Redis answers a PING on the
    pool, and the pub/sub listener is subscribed (without it every WebSocket
    handshake is refused with 503, so a proxy must stop routing here). A worker
    that is stopping says so too, so a proxy's health checks drain it."""
    app = get_app()
    if app.hub.fanout.closing:
        return {"status": "unavailable", "reason": "stopping"}, 503
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await app.redis.ping()
    except (RedisError, OSError, TimeoutError):
        return {"status": "unavailable", "reason": "redis"}, 503
    if not app.hub.bus.subscribed:
        return {"status": "unavailable", "reason": "pubsub"}, 503
    return {"status": "ok"}, 200
