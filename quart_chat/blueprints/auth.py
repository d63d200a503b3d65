"""Login by emailed one-time code, server-side sessions and logout (SPEC §4).

Every POST here is same-site only (CSRF), limited per client IP in Redis (so
limits hold across workers), and answers the same whatever the address: who
may log in is never revealed by a response.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeGuard, cast
from urllib.parse import urlencode, urlsplit

from quart import (
    Blueprint,
    Response,
    has_request_context,
    jsonify,
    redirect,
    render_template,
    request,
)
from quart_auth import Unauthorized, current_user, login_user, logout_user

from .. import keys
from ..addresses import normalize_email
from ..base import get_app
from ..codes import is_well_formed_code, issue_code, verify_code
from ..errors import APIError
from ..models.rooms import GENERAL
from ..models.sessions import create_session, revoke_session
from ..models.users import claim_user
from ..ratelimit import hit_limit
from ..realtime.announce import announce_room
from ..security import is_allowed_origin, safe_redirect_target
from ..web import SessionUser

log = logging.getLogger(__name__)

blueprint = Blueprint("auth", __name__)

IP_WINDOW_SECONDS = 3600
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


@blueprint.before_request
async def reject_cross_site_posts() -> None:
    settings = get_app().settings
    if request.method == "POST" and not is_allowed_origin(
        request.headers, request.scheme, request.host, settings.allowed_origins
    ):
        raise APIError(403, "forbidden_origin")


@blueprint.get("/login")
async def login_page() -> str:
    settings = get_app().settings
    user = await cast(SessionUser, current_user).load()
    return await render_template(
        "login.html",
        next=safe_redirect_target(request.args.get("next")),
        user=user,
        cookie_will_be_dropped=cookie_will_be_dropped(),
        code_ttl_minutes=max(1, settings.code_ttl_seconds // 60),
    )


@blueprint.post("/login/code")
async def request_code() -> tuple[dict[str, object], int]:
    app = get_app()
    settings = app.settings
    await limit_client("login-code", settings.code_requests_per_ip_hour)
    fields = await read_fields("email")
    email = normalize_email(fields["email"])
    if email is None:
        raise APIError(422, "invalid_email")
    # The code's mail goes through the outbox; nothing here depends on the outcome.
    await issue_code(app.redis, settings, email)
    return {"status": "sent", "resend_after": settings.code_resend_seconds}, 202


@blueprint.post("/login")
async def login() -> tuple[dict[str, object], int]:
    app = get_app()
    settings = app.settings
    await limit_client("login", settings.login_attempts_per_ip_hour)
    fields = await read_fields("email", "code", "next")
    email = normalize_email(fields["email"])
    code = fields["code"].strip()
    if email is None or not is_well_formed_code(code):
        raise APIError(400, "invalid_code")
    if not await verify_code(app.redis, settings, email, code):
        raise APIError(400, "invalid_code")
    previous = cast(SessionUser, current_user).auth_id
    if previous is not None:
        await revoke_session(app.redis, previous)
    user, created = await claim_user(app.redis, email)
    if created:
        # One more member of general: open pages show the new count.
        await announce_room(app.redis, GENERAL)
    if user.deactivated:
        # Deactivated between the code check and now: the same answer as a wrong code.
        raise APIError(400, "invalid_code")
    session_id = await create_session(app.redis, user, settings.session_seconds)
    # remember=True gives the cookie a Max-Age of CHAT_SESSION_DAYS, matching the Redis TTL.
    login_user(SessionUser(session_id), remember=True)
    log.info("user %s logged in", user.id)
    return {"status": "ok", "redirect": safe_redirect_target(fields["next"])}, 200


@blueprint.post("/logout")
async def logout() -> Response:
    session_id = cast(SessionUser, current_user).auth_id
    if session_id is not None:
        # Deleting the key logs the cookie out everywhere; the announcement
        # lets every worker close this session's WebSockets.
        await revoke_session(get_app().redis, session_id)
    logout_user()
    return cast(Response, redirect("/login", 303))


@blueprint.app_errorhandler(Unauthorized)
async def redirect_to_login(error: Unauthorized) -> Response | tuple[Response, int]:
    """Pages behind `login_required` send a browser to the login page and back;
    API and WebSocket callers get a plain 401."""
    if has_request_context() and request.method in {"GET", "HEAD"} and wants_html():
        target = request.path + (
            f"?{request.query_string.decode()}" if request.query_string else ""
        )
        return cast(Response, redirect("/login?" + urlencode({"next": target})))
    return jsonify({"error": "unauthorized"}), 401


def wants_html() -> bool:
    # A navigation names text/html explicitly; fetch() sends */* by default.
    return any(value == "text/html" and quality > 0 for value, quality in request.accept_mimetypes)


async def limit_client(action: str, limit: int) -> None:
    """Count this request against the client IP's hourly `limit` for `action`, or raise 429.

    `remote_addr` is the socket peer unless CHAT_TRUSTED_PROXY_HOPS > 0, in
    which case the app factory's proxy middleware has set it from
    X-Forwarded-For; a client cannot pick its own address otherwise.
    """
    key = keys.address_rate_limit(action, request.remote_addr)
    retry_after = await hit_limit(get_app().redis, key, limit, IP_WINDOW_SECONDS)
    if retry_after is not None:
        raise APIError.retry_later(429, "rate_limited", retry_after)


async def read_fields(*names: str) -> dict[str, str]:
    """The named string fields of a JSON object or form body; anything else reads as "".

    That includes strings with lone surrogates, which JSON can carry but which
    are not text: no header, Redis key or response could encode them.
    """
    data = await request.get_json(silent=True) if request.is_json else await request.form
    if not isinstance(data, Mapping):
        data = {}
    values = {name: data.get(name) for name in names}
    return {name: value if is_text(value) else "" for name, value in values.items()}


def is_text(value: object) -> TypeGuard[str]:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def cookie_will_be_dropped() -> bool:
    """True when a Secure cookie would be set over plain HTTP on a host browsers do not
    treat as secure: the login would silently loop, so the page says what to change."""
    if not get_app().settings.cookie_secure or request.scheme != "http":
        return False
    hostname = urlsplit(f"//{request.host}").hostname or ""
    return hostname not in LOCAL_HOSTS and not hostname.endswith(".localhost")
