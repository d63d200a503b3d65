"""The chat page. The chat WebSocket, `/ws`, is served below Quart (`realtime.middleware`)."""

from __future__ import annotations

from typing import cast

from quart import Blueprint, redirect, render_template
from quart_auth import current_user
from werkzeug.wrappers import Response as WerkzeugResponse

from ..web import SessionUser

blueprint = Blueprint("chat", __name__)


@blueprint.get("/")
async def index() -> str | WerkzeugResponse:
    user = await cast(SessionUser, current_user).load()
    if user is None:
        return redirect("/login?next=/")
    return await render_template("chat.html", user=user.public())
