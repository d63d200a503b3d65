"""quart-auth glue: the request's user, loaded from its session once per request."""

from __future__ import annotations

from quart_auth import Action, AuthUser

from .base import get_app
from .models.sessions import load_session
from .models.users import User


class SessionUser(AuthUser):
    """quart-auth's user: `auth_id` is the session id, resolved against Redis once per request."""

    def __init__(self, auth_id: str | None, action: Action = Action.PASS) -> None:
        super().__init__(auth_id, action)
        self._loaded = False
        self._user: User | None = None

    async def load(self) -> User | None:
        if not self._loaded:
            self._loaded = True
            if self.auth_id is not None:
                self._user = await load_session(get_app().redis, self.auth_id)
        return self._user

    @property
    async def is_authenticated(self) -> bool:
        return await self.load() is not None
