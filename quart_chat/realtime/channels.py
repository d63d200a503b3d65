"""The fixed pub/sub channels every worker listens to (room and user channels come and go)."""

from __future__ import annotations

from .. import keys

FIXED = (keys.PRESENCE_CHANNEL, keys.SESSION_REVOKED_CHANNEL, keys.USERS_CHANNEL)
