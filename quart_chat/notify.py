"""Notification emails: unread DMs or mentions waiting for a user who is away.

A user gets one email, through the mail outbox, when they have unread direct
messages or mentions and no open socket for CHAT_NOTIFY_EMAIL_AFTER_MINUTES,
and at most one per CHAT_NOTIFY_EMAIL_EVERY_MINUTES (SPEC §9).

- A DM or a mention, and a user's last socket on a worker closing, put the
  user in the sorted set `{notify}:due` scored by when to look (ZADD NX for
  a message, so a stream of DMs does not keep pushing the check back; GT for a
  closed socket, as the user is away only since then).
- Every worker runs `Notifier.run`: one script takes the due users off the
  set, so each is looked at by one worker; that worker checks they are still
  offline everywhere (presence) and still have something unread, and sends
  only if `SET {notify}:sent:<id> NX EX <every>` succeeds; if it does not (an
  email went out lately), the user is looked at again when that window ends.

The mail lists rooms and counts only: direct rooms by the other people's
names, other rooms by name; never message text, never anyone's address but
the recipient's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import keys
from .config import Settings
from .mail import APP_NAME, OutgoingMail
from .models.rooms import DIRECT, GENERAL, RoomStore
from .models.users import User, get_user
from .outbox import queue_mail
from .presence import PresenceTracker
from .storage import as_text, script

log = logging.getLogger(__name__)

KIND = "notify"
BATCH = 50
POLL_MAX_SECONDS = 5.0
REDIS_BACKOFF_SECONDS = 2.0
ROOM_KINDS_CACHED = 10_000
# How long a queued notification is worth sending.
MAIL_TTL_SECONDS = 3600

# KEYS: due set. ARGV: now ms, limit. Takes the due users off the set in one
# step, so two workers never both look at the same one.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


def notification_mail(
    user: User, rooms: Sequence[tuple[str, int, int, bool]], public_url: str | None
) -> OutgoingMail:
    """`rooms`: (name, unread, mentions, direct) for each room worth listing."""
    lines = []
    for name, unread, mentions, direct in rooms:
        if direct:
            lines.append(f"- {name}: {unread} unread direct message{'s' if unread != 1 else ''}")
        else:
            lines.append(f"- #{name}: {mentions} mention{'s' if mentions != 1 else ''}")
    where = f"Open {public_url} to read them." if public_url else f"open {APP_NAME} to read them."
    text = (
        f"Hello {user.name},\n\nWhile you were away on {APP_NAME}:\n\n"
        + "\n".join(lines)
        + f"\n\n{where[0].upper()}{where[1:]}\n"
    )
    return OutgoingMail(to=(user.email,), subject=f"Unread messages on {APP_NAME}", text=text)


class Notifier:
    def __init__(
        self, redis: Redis, settings: Settings, rooms: RoomStore, presence: PresenceTracker
    ) -> None:
        self.redis = redis
        self.rooms = rooms
        self.presence = presence
        self.after_ms = int(settings.notify_email_after_minutes * 60_000)
        self.every_seconds = max(1, round(settings.notify_email_every_minutes * 60))
        self.public_url = settings.public_url
        self._claim = script(redis, _CLAIM)
        # room id -> a DM's member ids, () for any other room (kinds and DM
        # members never change); cleared when full.
        self._direct_members: dict[str, tuple[str, ...]] = {}

    @property
    def enabled(self) -> bool:
        return self.after_ms > 0

    async def posted(self, room_id: str, poster_id: str, mentioned: Sequence[str]) -> None:
        """A message was posted: a DM's other members and the people it names
        may get an email later. Costs no Redis call for a message in a room
        that is not a DM and names nobody (most of them), and one read per DM
        room per worker (a DM's members never change)."""
        if not self.enabled:
            return
        targets = set(mentioned)
        if room_id != GENERAL:
            members = self._direct_members.get(room_id)
            if members is None:
                room = await self.rooms.get(room_id)
                if room is None:
                    return
                members = tuple(m.id for m in room.members) if room.kind == DIRECT else ()
                if len(self._direct_members) >= ROOM_KINDS_CACHED:
                    self._direct_members.clear()
                self._direct_members[room_id] = members
            targets.update(members)
        targets.discard(poster_id)
        await self.mark(sorted(targets))

    async def mark(self, user_ids: Sequence[str], *, away_now: bool = False) -> None:
        """These users may need an email after the delay; the loop re-checks everything.

        A DM or mention keeps an earlier check (NX: a stream of them does not
        postpone it forever); a closed socket moves it later (GT: away since now).
        """
        if not self.enabled or not user_ids:
            return
        due = int(time.time() * 1000) + self.after_ms
        try:
            await self.redis.zadd(
                keys.NOTIFY_DUE, dict.fromkeys(user_ids, due), nx=not away_now, gt=away_now
            )
        except (RedisError, OSError) as error:
            log.warning("could not schedule notification emails: %s", error)

    def mark_away(self, user_id: str) -> None:
        """`mark` for a user whose last socket here closed, without waiting (a
        socket's cleanup must not wait on Redis)."""
        if self.enabled:
            task = asyncio.get_running_loop().create_task(self.mark([user_id], away_now=True))
            _pending.add(task)
            task.add_done_callback(_pending.discard)

    async def run(self) -> None:
        if not self.enabled:
            await asyncio.Event().wait()  # off: idle, so supervision is quiet
            return
        poll = min(POLL_MAX_SECONDS, self.after_ms / 4000)
        while True:
            try:
                await self.tick()
            except (RedisError, OSError) as error:
                log.warning("notification emails: Redis error %s", error)
                await asyncio.sleep(REDIS_BACKOFF_SECONDS)
            await asyncio.sleep(poll)

    async def tick(self) -> int:
        """Look at every due user once; returns how many emails were queued."""
        due = await self._claim(keys=[keys.NOTIFY_DUE], args=[int(time.time() * 1000), BATCH])
        if not due:
            return 0
        online = {person["id"] for person in await self.presence.online()}
        sent = 0
        for raw in due:
            user_id = as_text(raw)
            if user_id not in online and await self._notify(user_id):
                sent += 1
        return sent

    async def _notify(self, user_id: str) -> bool:
        user = await get_user(self.redis, user_id)
        if user is None or user.deactivated:
            return False
        rooms = await self.rooms.rooms_of(user)
        states = await self.rooms.read_states(user.id, [room.id for room in rooms])
        listed = []
        for room in rooms:
            fields = self.rooms.viewer_fields(room, states[room.id])
            direct = room.kind == DIRECT
            if (direct and fields["unread"] > 0) or fields["mentions"] > 0:
                listed.append((room.name_for(user), fields["unread"], fields["mentions"], direct))
        if not listed:
            return False
        sent_key = keys.notify_sent(user.id)
        if not await self.redis.set(sent_key, "1", nx=True, ex=self.every_seconds):
            # Emailed lately: look again when that window ends, so a DM that
            # came in during it is not forgotten (NX: an earlier check stays).
            wait_ms = await self.redis.pttl(sent_key)
            if wait_ms > 0:
                await self.redis.zadd(
                    keys.NOTIFY_DUE, {user.id: int(time.time() * 1000) + wait_ms}, nx=True
                )
            return False
        await queue_mail(
            self.redis,
            notification_mail(user, listed, self.public_url),
            kind=KIND,
            ttl_seconds=MAIL_TTL_SECONDS,
        )
        return True


_pending: set[asyncio.Task[None]] = set()
