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
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await get_app().redis.ping()
    except (RedisError, OSError, TimeoutError):
        return {"status": "unavailable", "reason": "redis"}, 503
    return {"status": "ok"}, 200
