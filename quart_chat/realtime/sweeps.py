"""Closing sockets nobody else would: silent peers, and sessions that expired."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from .. import keys
from ..storage import Commands, raise_if_cancelled
from .fanout import Fanout
from .outbox import CLOSE_IDLE

log = logging.getLogger(__name__)

# Expired sessions are noticed by polling; revoked ones are announced at once.
SESSION_SWEEP_SECONDS = 30.0
# Silent sockets are looked for this many times per idle timeout, so one is
# closed at most a quarter of the timeout late.
IDLE_SWEEPS_PER_TIMEOUT = 4


async def sweep_idle(fanout: Fanout, idle_timeout_seconds: float) -> None:
    """Close sockets whose client went silent: a peer that vanished without a FIN.

    Neither Hypercorn nor TCP would: Hypercorn's `websocket_ping_interval`
    sends pings but never checks for the pong (and costs a task per
    socket), and the kernel only gives up on a dead peer when something
    unacknowledged is outstanding, after ~15 minutes of retransmits.
    """
    while True:
        await asyncio.sleep(idle_timeout_seconds / IDLE_SWEEPS_PER_TIMEOUT)
        closed = fanout.close_idle(time.monotonic() - idle_timeout_seconds, CLOSE_IDLE)
        if closed:
            log.info("closed %d WebSocket(s) silent for over %gs", closed, idle_timeout_seconds)


async def sweep_sessions(fanout: Fanout, redis: Commands) -> None:
    """Close the sockets of sessions that expired; revocations arrive by pub/sub instead."""
    while True:
        await asyncio.sleep(SESSION_SWEEP_SECONDS)
        await close_expired_sessions(fanout, redis)
        raise_if_cancelled()


async def close_expired_sessions(fanout: Fanout, redis: Commands) -> None:
    session_ids = fanout.sessions()
    if not session_ids:
        return
    try:
        # Through `Pipelined`: one round trip for all. A command per session on
        # the pool would take every connection and queue the handshakes behind them.
        exists = await asyncio.gather(
            *(redis.execute_command("EXISTS", keys.session(s)) for s in session_ids)
        )
    except (RedisError, OSError) as error:
        log.warning("could not check sessions: %s", error)
        return
    for session_id, alive in zip(session_ids, exists, strict=True):
        if not alive:
            fanout.close_session(session_id)
