"""The pub/sub channels of the real-time layer, and which room or user a channel is for.

Room channels and the fixed channels are named in keys.py; the per-user channel
and `chat:users` are named here until keys.py has them (models branch).
"""

from __future__ import annotations

from .. import keys

USERS_CHANNEL = "chat:users"
_USER_PREFIX = "{user:"
_USER_SUFFIX = "}:events"
# Subscribed for the life of the bus connection, whatever sockets come and go.
FIXED = (keys.PRESENCE_CHANNEL, keys.SESSION_REVOKED_CHANNEL, USERS_CHANNEL)


def room_channel(room_id: str) -> str:
    return keys.room_channel(room_id)


def user_channel(user_id: str) -> str:
    return f"{_USER_PREFIX}{user_id}{_USER_SUFFIX}"


def room_of_channel(channel: str) -> str | None:
    return keys.room_of_channel(channel)


def user_of_channel(channel: str) -> str | None:
    if channel.startswith(_USER_PREFIX) and channel.endswith(_USER_SUFFIX):
        return channel[len(_USER_PREFIX) : -len(_USER_SUFFIX)]
    return None
