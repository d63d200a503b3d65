"""Mentions: `@name` in a message's text resolved to user ids when it is posted.

A display name may contain spaces, so `@Ann Lee hi` is matched against whole
names: the candidates are the people whose casefolded name starts with the
letters right after `@` (one directory range read), and the longest whole
name that follows the `@` (case-insensitively, ending at a non-letter) wins.
Only members of the room resolve (in `general`, every active user).

`@everyone` and `@here` mention every member, but only in rooms of up to
EVERYONE_LIMIT members (SPEC §9); there is no cheap per-room "online now", so
`@here` is stored like `@everyone`. Such a message is counted once per member
through the room's `*` counter, not per id (see messages.py's post script).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import keys
from ..realtime.protocol import encode
from ..storage import Commands
from .rooms import GENERAL
from .users import User, count_active_users, search_people

EVERYONE_LIMIT = 500
EVERYONE_WORDS = ("everyone", "here")
# How many people sharing the letters after `@` are looked at per `@`.
CANDIDATES = 200
# The most distinct people one message mentions (beyond that: not resolved).
MAX_MENTIONS = 50


@dataclass(frozen=True, slots=True)
class Mentions:
    ids: tuple[str, ...] = ()
    everyone: bool = False

    def __bool__(self) -> bool:
        return bool(self.ids) or self.everyone

    def json_fields(self) -> str:
        """The frame's fields, each followed by a comma (the post script puts them
        before the author); empty when nobody is mentioned."""
        if not self:
            return ""
        fields = f'"mentions":{encode(list(self.ids))},'
        return fields + ('"everyone":true,' if self.everyone else "")


NOBODY = Mentions()


def _word_after(text: str, start: int) -> str:
    end = start
    while end < len(text) and text[end].isalnum():
        end += 1
    return text[start:end]


def _ends_there(rest: str, length: int) -> bool:
    return length == len(rest) or not rest[length].isalnum()


def _at_positions(text: str) -> list[int]:
    """Where each `@` that starts a mention is: not inside a word (so e-mail
    addresses are not mentions)."""
    return [
        i + 1
        for i, char in enumerate(text)
        if char == "@" and (i == 0 or not text[i - 1].isalnum())
    ]


async def _members_among(reads: Commands, room: str, users: list[User]) -> list[User]:
    if room == GENERAL or not users:
        return users
    flags = await reads.execute_command(
        "SMISMEMBER", keys.room_members(room), *(user.id for user in users)
    )
    return [user for user, flag in zip(users, flags, strict=True) if flag]


async def _room_size(reads: Commands, room: str) -> int:
    if room == GENERAL:
        return await count_active_users(reads)
    return int(await reads.execute_command("SCARD", keys.room_members(room)))


async def resolve_mentions(reads: Commands, room: str, text: str) -> Mentions:
    """The members `text` mentions, in order of first mention."""
    ids: dict[str, None] = {}
    everyone = False
    for start in _at_positions(text):
        word = _word_after(text, start)
        if not word:
            continue
        # Names are compared casefolded; a casefolded name can be longer than the
        # original (ß → ss), so enough of the text is taken to cover any name.
        rest = text[start : start + 4 * 100].casefold()
        if word.casefold() in EVERYONE_WORDS and _ends_there(rest, len(word.casefold())):
            everyone = True
            continue
        candidates = await _members_among(reads, room, await search_people(reads, word, CANDIDATES))
        best: User | None = None
        for user in candidates:
            name = user.name.casefold()
            longer = best is None or len(name) > len(best.name.casefold())
            if longer and rest.startswith(name) and _ends_there(rest, len(name)):
                best = user
        if best is not None and len(ids) < MAX_MENTIONS:
            ids[best.id] = None
    if everyone and await _room_size(reads, room) > EVERYONE_LIMIT:
        everyone = False
    return Mentions(tuple(ids), everyone)
