"""Every Redis key and channel name quart-chat uses, and nowhere else.

Names carry Redis Cluster hash tags (the part in braces picks the slot) so
that the keys one script touches share a slot:

- `{room:<id>}`: a room's history stream, its live channel, the
  idempotency records of sends to it, its meta hash and member set (one script
  checks membership, stores, records, counts and publishes), and the current
  state of its changed messages (edits, deletions, reactions);
- `{user:<id>}`: a user's profile, per-user rate limits, the rooms they are
  a member of, their read markers, their session ids and their event channel;
- `{login:<hash>}`: an address's login-code keys, tagged by a hash of the
  normalised email so that no address (braces included) appears in a name or
  splits its keys over slots;
- `{mail}`, `{presence}`, `{sockets}`, `{notify}`: each shared structure with the
  per-item keys its scripts reach, in one slot each.

Global indexes (`users:by-email`, `users:names`, `users:deactivated`,
`rooms:public`, `rooms:archived`, `rooms:names`, `rooms:direct`) have no tag.
Until Redis Cluster (issue 16) reworks them, these scripts touch more than one
slot, each in one step so no reader sees half of it:

- issuing a login code queues its mail (`{login:..}` + `{mail}`);
- presence announces on the global presence channel;
- a first login claims the address in `users:by-email`, writes the profile,
  indexes the name in `users:names` and sets the `general` read marker from
  `{room:general}:meta` (models/users.py `_CLAIM_USER`);
- renaming a user updates the profile and `users:names` (or
  `users:deactivated`) (models/users.py `_SET_NAME`); deactivating or
  reactivating moves the entry between the two and also sets or clears the
  address's `{login:<hash>}:deactivated` flag, which the login-code scripts
  check in their own slot (`_SET_DEACTIVATED`);
- creating a room claims its name in `rooms:names`, adds it to `rooms:public`
  and adds it to every member's `{user:<id>}:rooms` (models/rooms.py `_CREATE`);
- joining, inviting, removing and leaving update `{room:<id>}:members` and the
  user's `{user:<id>}:rooms` and `:read` (models/rooms.py `_ADD_MEMBER`,
  `_REMOVE_MEMBER`);
- opening a direct room claims the set of people in `rooms:direct` and adds the
  room to each member (models/rooms.py `_OPEN_DIRECT`);
- updating a room claims a new name or frees an archived one in `rooms:names`
  and `rooms:public`, and adds it to or takes it from `rooms:archived`
  (models/rooms.py `_UPDATE`).

No user text appears in a name: ids are server-made, emails and client ids
are hashed; room and display names are data, never names. `PATTERNS` lists
every name as a regular expression, so a test can check that nothing in Redis
is named anywhere else.
"""

from __future__ import annotations

import hashlib
import re

# Bumped when names change; quart_chat/migrations.py renames older names.
SCHEMA_VERSION = 3
SCHEMA_VERSION_KEY = "quart-chat:schema"
MIGRATION_LOCK_KEY = "quart-chat:migrating"

# The room every user is a member of; the only room id not made by the server.
GENERAL_ROOM = "general"

# Fixed names for things shared by every worker.
USERS_BY_EMAIL = "users:by-email"
# The directory: members "<casefolded name>\x00<user id>", all scored 0, so a
# prefix search is a ZRANGEBYLEX; deactivated users are not in it.
USERS_NAMES = "users:names"
# The same entries for deactivated users, so that admins can find them to
# reactivate; a user is in exactly one of the two.
USERS_DEACTIVATED = "users:deactivated"
# Ids of public rooms that are not archived (browse).
ROOMS_PUBLIC = "rooms:public"
# Ids of archived rooms (public and private), so that their creators and
# admins can find them to restore.
ROOMS_ARCHIVED = "rooms:archived"
# Casefolded trimmed name -> room id, for non-archived public and private rooms.
ROOMS_NAMES = "rooms:names"
# sha256 of the sorted member ids joined by "," -> the id of their direct room.
ROOMS_DIRECT = "rooms:direct"
PRESENCE_CHANNEL = "chat:presence"
SESSION_REVOKED_CHANNEL = "chat:session-revoked"
# Changed display names, to every worker.
USERS_CHANNEL = "chat:users"
MAIL_OUTBOX = "{mail}:outbox"
MAIL_RETRY = "{mail}:retry"
PRESENCE_WORKERS = "{presence}:workers"
PRESENCE_NAMES = "{presence}:names"
SOCKET_WORKERS = "{sockets}:workers"
# User id -> when (ms) to check whether they should get a notification email.
NOTIFY_DUE = "{notify}:due"
# Presence and socket-cap scripts visit every live worker's hash, which only
# the script knows (the workers set); they are given this prefix instead.
PRESENCE_WORKER_PREFIX = "{presence}:worker:"
SOCKET_WORKER_PREFIX = "{sockets}:worker:"

_ROOM_CHANNEL_PREFIX = "{room:"
_ROOM_CHANNEL_SUFFIX = "}:live"
# The pattern subscription that reaches every room's channel.
ROOM_CHANNEL_PATTERN = _ROOM_CHANNEL_PREFIX + "*" + _ROOM_CHANNEL_SUFFIX


def room_history(room: str) -> str:
    return f"{{room:{room}}}:history"


def room_channel(room: str) -> str:
    return f"{_ROOM_CHANNEL_PREFIX}{room}{_ROOM_CHANNEL_SUFFIX}"


def room_of_channel(channel: str) -> str | None:
    """The room whose live channel this is, or None for any other channel."""
    if channel.startswith(_ROOM_CHANNEL_PREFIX) and channel.endswith(_ROOM_CHANNEL_SUFFIX):
        return channel[len(_ROOM_CHANNEL_PREFIX) : -len(_ROOM_CHANNEL_SUFFIX)]
    return None


def room_meta(room: str) -> str:
    """kind, name, topic, created_by, created_at, archived, seq, last_id."""
    return f"{{room:{room}}}:meta"


def room_state(room: str) -> str:
    """Message id -> JSON of its current changes (edited text, deleted, reactions)."""
    return f"{{room:{room}}}:state"


def room_members(room: str) -> str:
    """Member user ids; `general` has none stored (everyone is a member)."""
    return f"{{room:{room}}}:members"


def room_mentions(room: str) -> str:
    """How many messages mentioned each member (field: user id; `*`: @everyone)."""
    return f"{{room:{room}}}:mentions"


def sent_message(room: str, user_id: str, client_id: str) -> str:
    """The id of the message a user's send with `client_id` stored, for retries."""
    return f"{{room:{room}}}:sent:{user_id}:{_digest(client_id, 32)}"


def user_profile(user_id: str) -> str:
    return f"{{user:{user_id}}}:profile"


def user_rooms(user_id: str) -> str:
    """Ids of the rooms the user is a member of, `general` excluded (implicit)."""
    return f"{{user:{user_id}}}:rooms"


def user_read(user_id: str) -> str:
    """Room id -> "<stream id> <seq>": the user's read marker in each room."""
    return f"{{user:{user_id}}}:read"


def user_sessions(user_id: str) -> str:
    """The user's session ids, so that deactivation can revoke them all."""
    return f"{{user:{user_id}}}:sessions"


_USER_CHANNEL_PREFIX = "{user:"
_USER_CHANNEL_SUFFIX = "}:events"


def user_channel(user_id: str) -> str:
    """The per-user channel: frames for all of a user's sockets on every worker."""
    return f"{_USER_CHANNEL_PREFIX}{user_id}{_USER_CHANNEL_SUFFIX}"


def user_of_channel(channel: str) -> str | None:
    """The user whose event channel this is, or None for any other channel."""
    if channel.startswith(_USER_CHANNEL_PREFIX) and channel.endswith(_USER_CHANNEL_SUFFIX):
        return channel[len(_USER_CHANNEL_PREFIX) : -len(_USER_CHANNEL_SUFFIX)]
    return None


def user_rate_limit(user_id: str, action: str) -> str:
    return f"{{user:{user_id}}}:ratelimit:{action}"


def address_rate_limit(action: str, address: str | None) -> str:
    return f"ratelimit:{action}:ip:{address}"


def session(session_id: str) -> str:
    """A session, found by the cookie's opaque id alone (the cookie does not name the user)."""
    return f"session:{session_id}"


def email_tag(email: str) -> str:
    """The hash tag of a normalised address's login keys."""
    return f"{{login:{_digest(email, 16)}}}"


def login_code(email: str) -> str:
    return f"{email_tag(email)}:code"


def login_code_resend(email: str) -> str:
    return f"{email_tag(email)}:resend"


def login_code_failures(email: str) -> str:
    return f"{email_tag(email)}:failures"


def login_code_mail(email: str) -> str:
    """Which queued mail carries the address's current code, so a new code drops it."""
    return f"{email_tag(email)}:mail"


def login_deactivated(email: str) -> str:
    """Set while the address's user is deactivated: no code is issued or accepted."""
    return f"{email_tag(email)}:deactivated"


def mail(mail_id: str) -> str:
    return f"{{mail}}:{mail_id}"


def notify_sent(user_id: str) -> str:
    """Set while a user got a notification email within CHAT_NOTIFY_EMAIL_EVERY_MINUTES."""
    return f"{{notify}}:sent:{user_id}"


def presence_worker(worker_id: str) -> str:
    return PRESENCE_WORKER_PREFIX + worker_id


def socket_worker(worker_id: str) -> str:
    return SOCKET_WORKER_PREFIX + worker_id


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


_ID = r"[^{}:]+"
_HEX16 = r"[0-9a-f]{16}"
# Every key name above, as written to Redis (channels are not keys).
PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        re.escape(SCHEMA_VERSION_KEY),
        re.escape(MIGRATION_LOCK_KEY),
        re.escape(USERS_BY_EMAIL),
        re.escape(USERS_NAMES),
        re.escape(USERS_DEACTIVATED),
        re.escape(ROOMS_PUBLIC),
        re.escape(ROOMS_ARCHIVED),
        re.escape(ROOMS_NAMES),
        re.escape(ROOMS_DIRECT),
        re.escape(MAIL_OUTBOX),
        re.escape(MAIL_RETRY),
        re.escape(PRESENCE_WORKERS),
        re.escape(PRESENCE_NAMES),
        re.escape(SOCKET_WORKERS),
        re.escape(NOTIFY_DUE),
        rf"\{{notify\}}:sent:{_ID}",
        re.escape(PRESENCE_WORKER_PREFIX) + _ID,
        re.escape(SOCKET_WORKER_PREFIX) + _ID,
        rf"\{{room:{_ID}\}}:(history|meta|members|mentions|state)",
        rf"\{{room:{_ID}\}}:sent:{_ID}:[0-9a-f]{{32}}",
        rf"\{{user:{_ID}\}}:(profile|rooms|read|sessions)",
        rf"\{{user:{_ID}\}}:ratelimit:[a-z-]+",
        r"ratelimit:[a-z-]+:ip:.+",
        r"session:[A-Za-z0-9_-]+",
        rf"\{{login:{_HEX16}\}}:(code|resend|failures|mail|deactivated)",
        r"\{mail\}:[0-9a-f]+",
    )
)


def is_known_key(name: str) -> bool:
    return any(pattern.fullmatch(name) for pattern in PATTERNS)
