"""The chat page: `/` shows general, `/r/<room>` any other room. The chat
WebSocket, `/ws`, is served below Quart (`realtime.middleware`).

Both routes serve the same page and never look the room up: what the page
shows for a room id comes over the socket, after the per-frame membership
check, so a private room's URL reveals nothing to a non-member (not even that
it exists).
"""

from __future__ import annotations

from typing import cast
from urllib.parse import quote

from quart import Blueprint, redirect, render_template, request, url_for
from quart_auth import current_user
from werkzeug.wrappers import Response as WerkzeugResponse

from ..web import SessionUser

blueprint = Blueprint("chat", __name__)


@blueprint.get("/")
async def index() -> str | WerkzeugResponse:
    return await chat_page()


@blueprint.get("/r/<room_id>")
async def room(room_id: str) -> str | WerkzeugResponse:
    return await chat_page()


async def chat_page() -> str | WerkzeugResponse:
    """The page for the logged-in user, or the login page that comes back here."""
    user = await cast(SessionUser, current_user).load()
    if user is None:
        return redirect(url_for("auth.login_page") + "?next=" + quote(request.path, safe="/"))
    return await render_template("chat.html", user=user.public())
