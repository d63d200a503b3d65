"""Room changes announced on a room's channel, from a socket or from outside one.

A first login changes general's member count without any chat socket being
involved (blueprints/auth.py), so the payload is built here for both.
"""

from __future__ import annotations

from redis.asyncio import Redis

from .. import keys
from ..models.rooms import Room, RoomStore
from .protocol import EVENT_ROOM, event_payload, room_frame


def room_changed(room: Room) -> tuple[str, str]:
    """(channel, payload) telling the room's members its new name, topic or member
    count: the room object without viewer fields (each page keeps its own)."""
    return keys.room_channel(room.id), event_payload(EVENT_ROOM, None, room_frame(room.public()))


async def announce_room(redis: Redis, room_id: str) -> None:
    """Read the room now and publish it to its members (nothing if it is gone)."""
    room = await RoomStore(redis).get(room_id)
    if room is not None:
        await redis.publish(*room_changed(room))
