"""Login by emailed code, sessions and logout, over HTTP, with the code read from real mail."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from quart.testing import QuartClient
from quart_auth import current_user, login_required
from redis.asyncio import Redis

from quart_chat import keys
from quart_chat.app import create_app
from quart_chat.base import ChatApp
from quart_chat.config import Settings
from quart_chat.models.users import find_user_by_email, set_deactivated
from quart_chat.web import SessionUser

from .. import chatting
from ..conftest import make_settings
from ..smtp import SmtpSink, code_in

EMAIL = "ada@example.com"
SENT = {"status": "sent", "resend_after": 60}
COOKIE = "QUART_AUTH"

StartApp = Callable[..., Awaitable[tuple[ChatApp, QuartClient]]]


def smtp_settings(smtp: SmtpSink) -> dict[str, Any]:
    env = smtp.env()
    return {
        "smtp_host": env["CHAT_SMTP_HOST"],
        "smtp_port": int(env["CHAT_SMTP_PORT"]),
        "smtp_security": "none",
        "smtp_from": env["CHAT_SMTP_FROM"],
    }


def build_app(settings: Settings) -> ChatApp:
    """The real app plus one page behind `login_required`, standing in for the chat page."""
    app = create_app(settings)

    @app.get("/whoami")
    @login_required
    async def whoami() -> dict[str, str]:
        user = await current_user.load()  # type: ignore[attr-defined]
        assert user is not None
        return user.public()  # type: ignore[no-any-return]

    return app


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, smtp: SmtpSink) -> Settings:
    return make_settings(redis_url, tmp_path / "var", **smtp_settings(smtp))


@pytest.fixture
async def app(settings: Settings, redis: Redis) -> AsyncIterator[ChatApp]:
    app = build_app(settings)
    async with app.test_app():
        yield app


@pytest.fixture
async def start_app(
    redis: Redis, redis_url: str, tmp_path: Path, smtp: SmtpSink
) -> AsyncIterator[StartApp]:
    """Start an app with some settings changed; `model_copy` skips validation on purpose."""
    async with AsyncExitStack() as stack:

        async def start(**changes: Any) -> tuple[ChatApp, QuartClient]:
            base = make_settings(redis_url, tmp_path / "var", **smtp_settings(smtp))
            app = build_app(base.model_copy(update=changes))
            await stack.enter_async_context(app.test_app())
            return app, app.test_client()

        yield start


async def drain(app: ChatApp, timeout: float = 15.0) -> None:
    """Wait until the outbox has settled every mail queued so far: sent, given up or dropped."""
    async with asyncio.timeout(timeout):
        while await app.redis.xlen(keys.MAIL_OUTBOX) or await app.redis.zcard(keys.MAIL_RETRY):
            await asyncio.sleep(0.05)


async def wait_for_log(
    caplog: pytest.LogCaptureFixture, pattern: str, timeout: float = 15.0
) -> str:
    async with asyncio.timeout(timeout):
        while not (match := re.search(pattern, caplog.text)):
            await asyncio.sleep(0.05)
    return match.group(0)


async def read_code(smtp: SmtpSink, email: str = EMAIL, count: int = 1) -> str:
    return await asyncio.to_thread(smtp.wait_for_code, email, count)


async def request_code(client: QuartClient, email: str = EMAIL, **kwargs: Any) -> Any:
    return await client.post("/login/code", json={"email": email}, **kwargs)


async def log_in(client: QuartClient, smtp: SmtpSink, email: str = EMAIL) -> Any:
    assert (await request_code(client, email)).status_code == 202
    code = await read_code(smtp, email)
    response = await client.post("/login", json={"email": email, "code": code})
    assert response.status_code == 200, await response.get_data()
    return response


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def cookie_value(response: Any) -> str:
    match = re.search(rf"{COOKIE}=([^;]+)", response.headers["Set-Cookie"])
    assert match
    return match.group(1)


# --- the page ---------------------------------------------------------------


async def test_login_page_has_both_steps_and_no_inline_script(client: QuartClient) -> None:
    response = await client.get("/login")
    assert response.status_code == 200
    page = await response.get_data(as_text=True)
    for marker in [
        'id="email"',
        "Send code",
        'id="code"',
        "Log in",
        'autocomplete="one-time-code"',
    ]:
        assert marker in page
    assert '<script type="module" src="/static/login.js"></script>' in page
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert 'id="insecure-cookie"' not in page
    for asset in ("/static/login.js", "/static/app.css"):
        assert (await client.get(asset)).status_code == 200


@pytest.mark.parametrize(
    ("host", "scheme", "secure", "warned"),
    [
        ("chat.example.com", "http", True, True),
        ("chat.example.com:8080", "http", True, True),
        ("chat.example.com", "https", True, False),
        ("chat.example.com", "http", False, False),
        ("localhost:9990", "http", True, False),
        ("127.0.0.1:9990", "http", True, False),
        ("[::1]:9990", "http", True, False),
    ],
)
async def test_login_page_says_when_secure_cookies_cannot_work(
    start_app: StartApp, host: str, scheme: str, secure: bool, warned: bool
) -> None:
    _, client = await start_app(cookie_secure=secure)
    response = await client.get("/login", headers={"Host": host}, scheme=scheme)
    page = await response.get_data(as_text=True)
    assert ('id="insecure-cookie"' in page) is warned
    assert ("CHAT_COOKIE_SECURE=false" in page) is warned


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/rooms/general?x=1", "/rooms/general?x=1"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("", "/"),
    ],
)
async def test_login_page_keeps_only_same_site_next(
    client: QuartClient, given: str, kept: str
) -> None:
    response = await client.get("/login", query_string={"next": given})
    page = await response.get_data(as_text=True)
    assert re.search(r'name="next" value="([^"]*)"', page).group(1) == kept.replace("&", "&amp;")  # type: ignore[union-attr]


# --- the happy path ---------------------------------------------------------


async def test_login_end_to_end(client: QuartClient, smtp: SmtpSink) -> None:
    assert (await client.get("/whoami")).status_code == 401
    response = await request_code(client, "Ada@Example.com")
    assert response.status_code == 202
    assert await response.get_json() == SENT

    message = await asyncio.to_thread(smtp.wait_for_message, EMAIL)
    assert "quart-chat" in str(message["Subject"])
    code = await read_code(smtp)
    response = await client.post("/login", json={"email": "ada@example.com", "code": code})
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok", "redirect": "/"}

    whoami = await client.get("/whoami")
    assert whoami.status_code == 200
    assert (await whoami.get_json())["name"] == "ada"
    page = await (await client.get("/login")).get_data(as_text=True)
    assert "You are logged in as <strong>ada</strong>" in page


async def test_login_with_form_posts(client: QuartClient, smtp: SmtpSink) -> None:
    response = await client.post("/login/code", form={"email": EMAIL})
    assert response.status_code == 202
    assert await response.get_json() == SENT
    code = await read_code(smtp)
    response = await client.post(
        "/login", form={"email": EMAIL, "code": code, "next": "/rooms/ops"}
    )
    assert await response.get_json() == {"status": "ok", "redirect": "/rooms/ops"}
    assert (await client.get("/whoami")).status_code == 200


async def test_login_ignores_an_offsite_next(client: QuartClient, smtp: SmtpSink) -> None:
    await request_code(client)
    code = await read_code(smtp)
    response = await client.post(
        "/login", json={"email": EMAIL, "code": code, "next": "https://evil.example/"}
    )
    assert await response.get_json() == {"status": "ok", "redirect": "/"}


async def test_session_cookie_flags(client: QuartClient, smtp: SmtpSink) -> None:
    response = await log_in(client, smtp)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Max-Age=2592000" in cookie  # CHAT_SESSION_DAYS=30
    assert "Secure" not in cookie


async def test_secure_cookie_over_https(start_app: StartApp, smtp: SmtpSink) -> None:
    _, client = await start_app(cookie_secure=True, session_days=2)
    await client.post("/login/code", json={"email": EMAIL}, scheme="https")
    code = await read_code(smtp)
    response = await client.post("/login", json={"email": EMAIL, "code": code}, scheme="https")
    assert response.status_code == 200
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Max-Age=172800" in cookie


async def test_cookie_is_an_opaque_session_id(
    client: QuartClient, smtp: SmtpSink, redis: Redis
) -> None:
    response = await log_in(client, smtp)
    assert EMAIL not in cookie_value(response)
    sessions = await redis.keys("session:*")
    assert len(sessions) == 1
    session_id = sessions[0].decode().removeprefix("session:")
    assert len(session_id) >= 22  # >= 128 bits of urlsafe base64
    assert 29 * 86400 < await redis.ttl(sessions[0]) <= 30 * 86400


# --- wrong, expired, used, replaced codes -----------------------------------


async def test_wrong_code(client: QuartClient, smtp: SmtpSink) -> None:
    await request_code(client)
    code = await read_code(smtp)
    for attempt in (wrong(code), "12345", "abcdef", "1234567", ""):
        response = await client.post("/login", json={"email": EMAIL, "code": attempt})
        assert response.status_code == 400
        assert await response.get_json() == {"error": "invalid_code"}
    response = await client.post("/login", json={"email": EMAIL, "code": 123456})
    assert await response.get_json() == {"error": "invalid_code"}
    assert (await client.get("/whoami")).status_code == 401


async def test_code_for_an_unknown_address(client: QuartClient) -> None:
    response = await client.post("/login", json={"email": "nobody@example.com", "code": "123456"})
    assert response.status_code == 400
    assert await response.get_json() == {"error": "invalid_code"}


async def test_expired_code(start_app: StartApp, smtp: SmtpSink) -> None:
    _, client = await start_app(code_ttl_seconds=1)
    await request_code(client)
    code = await read_code(smtp)
    await asyncio.sleep(2.1)
    response = await client.post("/login", json={"email": EMAIL, "code": code})
    assert response.status_code == 400
    assert await response.get_json() == {"error": "invalid_code"}


async def test_code_burned_after_max_attempts(start_app: StartApp, smtp: SmtpSink) -> None:
    _, client = await start_app(code_max_attempts=3)
    await request_code(client)
    code = await read_code(smtp)
    for _ in range(3):
        response = await client.post("/login", json={"email": EMAIL, "code": wrong(code)})
        assert response.status_code == 400
    response = await client.post("/login", json={"email": EMAIL, "code": code})
    assert response.status_code == 400
    assert await response.get_json() == {"error": "invalid_code"}


async def test_used_code_cannot_be_replayed(app: ChatApp, smtp: SmtpSink) -> None:
    first = app.test_client()
    await request_code(first)
    code = await read_code(smtp)
    assert (await first.post("/login", json={"email": EMAIL, "code": code})).status_code == 200
    replay = await app.test_client().post("/login", json={"email": EMAIL, "code": code})
    assert replay.status_code == 400
    assert await replay.get_json() == {"error": "invalid_code"}


async def test_old_code_fails_after_resend(start_app: StartApp, smtp: SmtpSink) -> None:
    _, client = await start_app(code_resend_seconds=0)
    await request_code(client)
    old = await read_code(smtp, count=1)
    await request_code(client)
    new = await read_code(smtp, count=2)
    if old != new:  # one in a million they coincide
        response = await client.post("/login", json={"email": EMAIL, "code": old})
        assert response.status_code == 400
    assert (await client.post("/login", json={"email": EMAIL, "code": new})).status_code == 200


async def test_concurrent_double_use(app: ChatApp, smtp: SmtpSink) -> None:
    await request_code(app.test_client())
    code = await read_code(smtp)
    clients = [app.test_client() for _ in range(4)]
    responses = await asyncio.gather(
        *(c.post("/login", json={"email": EMAIL, "code": code}) for c in clients)
    )
    assert sorted(r.status_code for r in responses) == [200, 400, 400, 400]
    logged_in = [(await c.get("/whoami")).status_code for c in clients]
    assert sorted(logged_in) == [200, 401, 401, 401]


async def test_address_locked_after_daily_failures(
    start_app: StartApp, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    app, client = await start_app(
        code_failures_per_email_day=4, code_max_attempts=3, code_resend_seconds=0
    )
    await request_code(client)
    code = await read_code(smtp)
    for _ in range(3):  # burns the first code
        await client.post("/login", json={"email": EMAIL, "code": wrong(code)})
    await request_code(client)
    code = await read_code(smtp, count=2)
    await client.post("/login", json={"email": EMAIL, "code": wrong(code)})
    assert "locked for 24 h" in caplog.text

    response = await client.post("/login", json={"email": EMAIL, "code": code})
    assert await response.get_json() == {"error": "invalid_code"}
    response = await request_code(client)
    assert response.status_code == 202
    assert await response.get_json() == {"status": "sent", "resend_after": 0}
    await drain(app)
    assert len(smtp.messages_to(EMAIL)) == 2
    assert "login code not sent to ada@example.com: the address is locked" in caplog.text


# --- no enumeration ---------------------------------------------------------


async def test_same_answer_for_allowed_unknown_and_repeated_addresses(
    start_app: StartApp, smtp: SmtpSink
) -> None:
    app, client = await start_app(
        allowed_emails=["ada@example.com"], allowed_email_domains=["corp.test"]
    )
    answers = []
    for email in (EMAIL, "eve@example.com", EMAIL, "bob@corp.test", "mallory@evil.test"):
        response = await request_code(client, email)
        answers.append(
            (
                response.status_code,
                await response.get_data(),
                sorted(k for k in response.headers if k[0] != "Date"),
            )
        )
    assert all(answer == answers[0] for answer in answers)
    assert answers[0][0] == 202
    await drain(app)
    assert len(smtp.messages_to(EMAIL)) == 1  # the repeat within 60 s sent nothing
    assert len(smtp.messages_to("bob@corp.test")) == 1
    assert smtp.messages_to("eve@example.com") == []
    assert smtp.messages_to("mallory@evil.test") == []
    assert len(smtp.messages) == 2


async def test_not_allowed_address_cannot_log_in(start_app: StartApp) -> None:
    _, client = await start_app(allowed_email_domains=["corp.test"])
    await request_code(client, "eve@example.com")
    for code in ("000000", "123456"):
        response = await client.post("/login", json={"email": "eve@example.com", "code": code})
        assert response.status_code == 400


@pytest.mark.parametrize(
    "email", ["", "ada", "ada@example", "a da@example.com", "ada@example.com\r\nBcc: e@x.io", 42]
)
async def test_malformed_email(client: QuartClient, email: object) -> None:
    response = await client.post("/login/code", json={"email": email})
    assert response.status_code == 422
    assert await response.get_json() == {"error": "invalid_email"}


# Header syntax that turned into another recipient at the SMTP server.
HOSTILE_ADDRESSES = [
    "<attacker@evil.test>",
    "Victim <attacker@evil.test>",
    "attacker(x)@evil.test",
    "attacker@evil.test (victim@allowed.test)",
    "g:attacker@evil.test;",
    "attacker,victim@example.com",
    "victim@allowed.test, attacker@evil.test",
    "victim<attacker>@allowed.test",
    "@route.example:attacker@evil.test",
    '"attacker@evil.test"@allowed.test',
    "attacker@[127.0.0.1]",
]


@pytest.mark.parametrize("email", HOSTILE_ADDRESSES)
@pytest.mark.parametrize("allowed_domains", [[], ["allowed.test"]])
@pytest.mark.parametrize("as_form", [False, True])
async def test_header_syntax_is_refused_and_mails_nobody(
    start_app: StartApp, smtp: SmtpSink, email: str, allowed_domains: list[str], as_form: bool
) -> None:
    app, client = await start_app(allowed_email_domains=allowed_domains)
    if as_form:
        response = await client.post("/login/code", form={"email": email})
    else:
        response = await request_code(client, email)
    assert response.status_code == 422
    assert await response.get_json() == {"error": "invalid_email"}
    await drain(app)
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("typed", "account"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ADA@example.com\t", "ada@example.com"),
        ("ada@BÜCHER.example", "ada@xn--bcher-kva.example"),
    ],
)
async def test_code_goes_only_to_the_normalised_address(
    client: QuartClient, app: ChatApp, smtp: SmtpSink, typed: str, account: str
) -> None:
    assert (await request_code(client, typed)).status_code == 202
    await asyncio.to_thread(smtp.wait_for_message, account)
    await drain(app)
    assert smtp.envelope_recipients == [[account]]
    assert str(smtp.messages[0]["To"]) == account
    code = code_in(smtp.messages[0])
    # Any spelling of the address logs in to the same one account.
    response = await client.post("/login", json={"email": typed.upper(), "code": code})
    assert response.status_code == 200
    assert (await (await client.get("/whoami")).get_json())["name"] == account.split("@")[0]


async def test_allowlists_match_the_normalised_address(
    redis: Redis, redis_url: str, tmp_path: Path, smtp: SmtpSink
) -> None:
    settings = make_settings(
        redis_url,
        tmp_path / "var",
        **smtp_settings(smtp),
        allowed_emails="Ada@Example.com",
        allowed_email_domains="Bücher.example",
    )
    app = build_app(settings)
    async with app.test_app():
        await check_allowlists(app, smtp)


async def check_allowlists(app: ChatApp, smtp: SmtpSink) -> None:
    client = app.test_client()
    for email in ("ADA@example.COM", "bob@xn--bcher-kva.example", "eve@example.com"):
        assert (await request_code(client, email)).status_code == 202
    await asyncio.to_thread(smtp.wait_for_message, "bob@xn--bcher-kva.example")
    await asyncio.to_thread(smtp.wait_for_message, "ada@example.com")
    await drain(app)
    assert sorted(smtp.envelope_recipients) == [["ada@example.com"], ["bob@xn--bcher-kva.example"]]


async def test_body_that_is_not_an_object(client: QuartClient) -> None:
    response = await client.post("/login/code", json=["ada@example.com"])
    assert await response.get_json() == {"error": "invalid_email"}


# --- per-IP limits ----------------------------------------------------------


async def test_code_requests_per_ip_limit(start_app: StartApp) -> None:
    _, client = await start_app(code_requests_per_ip_hour=2)
    for n in range(2):
        assert (await request_code(client, f"user{n}@example.com")).status_code == 202
    response = await request_code(client, "user9@example.com")
    assert response.status_code == 429
    body = await response.get_json()
    assert body["error"] == "rate_limited"
    assert 3500 < body["retry_after"] <= 3600
    assert response.headers["Retry-After"] == str(body["retry_after"])


async def test_login_attempts_per_ip_limit(start_app: StartApp) -> None:
    _, client = await start_app(login_attempts_per_ip_hour=3)
    for _ in range(3):
        response = await client.post("/login", json={"email": EMAIL, "code": "000000"})
        assert response.status_code == 400
    response = await client.post("/login", json={"email": EMAIL, "code": "000000"})
    assert response.status_code == 429
    assert (await response.get_json())["error"] == "rate_limited"
    assert int(response.headers["Retry-After"]) > 0


async def test_forwarded_for_is_ignored_without_trusted_proxies(start_app: StartApp) -> None:
    _, client = await start_app(code_requests_per_ip_hour=2, trusted_proxy_hops=0)
    statuses = [
        (
            await request_code(
                client, headers={"X-Forwarded-For": f"203.0.113.{n}", "Remote-Addr": f"10.0.0.{n}"}
            )
        ).status_code
        for n in range(3)
    ]
    assert statuses == [202, 202, 429]


async def test_forwarded_for_is_honoured_with_one_trusted_proxy(start_app: StartApp) -> None:
    _, client = await start_app(code_requests_per_ip_hour=2, trusted_proxy_hops=1)
    distinct = [
        (await request_code(client, headers={"X-Forwarded-For": f"203.0.113.{n}"})).status_code
        for n in range(4)
    ]
    assert distinct == [202, 202, 202, 202]
    # The proxy appends the real peer last; a client-supplied first entry is not trusted.
    same = [
        (
            await request_code(client, headers={"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.77"})
        ).status_code
        for n in range(3)
    ]
    assert same == [202, 202, 429]


# --- CSRF -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost.evil.example"},
    ],
)
@pytest.mark.parametrize("path", ["/login/code", "/login", "/logout"])
async def test_cross_site_posts_are_refused(
    app: ChatApp, client: QuartClient, smtp: SmtpSink, headers: dict[str, str], path: str
) -> None:
    response = await client.post(path, json={"email": EMAIL, "code": "123456"}, headers=headers)
    assert response.status_code == 403
    assert await response.get_json() == {"error": "forbidden_origin"}
    await drain(app)
    assert smtp.messages == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "https://chat.example.com", "Sec-Fetch-Site": "same-site"},
    ],
)
async def test_same_site_posts_are_accepted(start_app: StartApp, headers: dict[str, str]) -> None:
    _, client = await start_app(allowed_origins=["https://chat.example.com"])
    assert (await request_code(client, headers=headers)).status_code == 202


# --- sessions and logout ----------------------------------------------------


async def test_logout_revokes_the_session_server_side(
    app: ChatApp, client: QuartClient, smtp: SmtpSink, redis: Redis
) -> None:
    token = cookie_value(await log_in(client, smtp))
    replay = app.test_client()
    assert (await replay.get("/whoami", headers={"Cookie": f"{COOKIE}={token}"})).status_code == 200

    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.SESSION_REVOKED_CHANNEL)
        await pubsub.get_message(timeout=5)  # the subscribe confirmation
        response = await client.post("/logout")
        announced = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert response.status_code == 303
    assert response.headers["Location"] == "/login"
    assert f"{COOKIE}=;" in response.headers["Set-Cookie"]
    assert announced is not None and announced["type"] == "message"

    assert (await client.get("/whoami")).status_code == 401
    # The old cookie is still correctly signed, but its session is gone.
    old = await replay.get("/whoami", headers={"Cookie": f"{COOKIE}={token}"})
    assert old.status_code == 401
    page = await replay.get("/login", headers={"Cookie": f"{COOKIE}={token}"})
    assert "You are logged in" not in await page.get_data(as_text=True)


async def test_logout_form_post_from_the_page(client: QuartClient, smtp: SmtpSink) -> None:
    await log_in(client, smtp)
    page = await (await client.get("/login")).get_data(as_text=True)
    assert '<form method="post" action="/logout">' in page
    response = await client.post(
        "/logout", form={}, headers={"Origin": "http://localhost"}, follow_redirects=True
    )
    assert response.status_code == 200
    assert "You are logged in" not in await response.get_data(as_text=True)


async def test_logout_without_a_session_just_redirects(client: QuartClient) -> None:
    response = await client.post("/logout")
    assert response.status_code == 303
    assert response.headers["Location"] == "/login"


async def test_logging_in_again_replaces_the_session(
    app: ChatApp, client: QuartClient, smtp: SmtpSink, redis: Redis
) -> None:
    first = cookie_value(await log_in(client, smtp))
    await redis.delete(keys.login_code_resend("ada@example.com"))
    await request_code(client)
    code = await read_code(smtp, count=2)
    await client.post("/login", json={"email": EMAIL, "code": code})
    assert (await client.get("/whoami")).status_code == 200
    stale = await app.test_client().get("/whoami", headers={"Cookie": f"{COOKIE}={first}"})
    assert stale.status_code == 401
    assert len(await redis.keys("session:*")) == 1


async def test_pages_redirect_to_login_and_apis_answer_401(client: QuartClient) -> None:
    page = await client.get("/whoami?tab=2", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status_code == 302
    assert page.headers["Location"] == "/login?next=%2Fwhoami%3Ftab%3D2"
    api = await client.get("/whoami", headers={"Accept": "*/*"})
    assert api.status_code == 401
    assert await api.get_json() == {"error": "unauthorized"}


async def test_session_user_class_is_used(app: ChatApp) -> None:
    async with app.test_request_context("/"):
        assert isinstance(current_user._get_current_object(), SessionUser)  # type: ignore[attr-defined]


# --- mail delivery never changes the answer ---------------------------------


async def test_smtp_down_is_logged_and_answer_is_unchanged(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    _, client = await start_app(smtp_port=dead_port)
    response = await request_code(client)
    assert response.status_code == 202
    assert await response.get_json() == SENT
    await wait_for_log(
        caplog,
        r"could not send login code mail \w+ to ada@example.com \(attempt 1\): "
        r"SMTPConnectError: .*; retrying in",
    )


async def test_response_does_not_wait_for_a_hung_smtp_server(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        _, client = await start_app(smtp_port=silent.getsockname()[1], smtp_timeout_seconds=2)
        response = await request_code(client)
        assert response.status_code == 202
        assert await response.get_json() == SENT
        # The answer is out while the send is still waiting for a greeting.
        assert "could not send" not in caplog.text
        await wait_for_log(
            caplog, r"could not send login code mail \w+ to ada@example.com .*Timeout"
        )


async def test_console_mailer_logs_the_code_never_answers_it(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    _, client = await start_app(smtp_host=None, smtp_from=None)
    response = await request_code(client)
    body = await response.get_data()
    line = await wait_for_log(
        caplog, r"mail to ada@example.com \(console mailer\): Your quart-chat login code: \d{6}"
    )
    code = line[-6:]
    assert code.encode() not in body
    login = await client.post("/login", json={"email": EMAIL, "code": code})
    assert login.status_code == 200
    # The outbox's own lines name the mail, never its text.
    outbox_lines = [r.getMessage() for r in caplog.records if r.name == "quart_chat.outbox"]
    assert any("sent login code mail" in line for line in outbox_lines)
    assert not any(code in line for line in outbox_lines)


# --- text that is not text ----------------------------------------------------

SURROGATES = ["\ud800@example.com", "ada@exa\udc00mple.com", "ada\udfff@example.com"]


@pytest.mark.parametrize("email", SURROGATES)
async def test_lone_surrogate_in_the_email_is_invalid_email(
    client: QuartClient, app: ChatApp, smtp: SmtpSink, caplog: pytest.LogCaptureFixture, email: str
) -> None:
    response = await request_code(client, email)
    assert response.status_code == 422
    assert await response.get_json() == {"error": "invalid_email"}
    response = await client.post("/login", json={"email": email, "code": "123456"})
    assert response.status_code == 400
    assert await response.get_json() == {"error": "invalid_code"}
    await drain(app)
    assert smtp.messages == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_undecodable_form_fields_are_invalid(client: QuartClient) -> None:
    # Percent-encoded bytes of a lone surrogate: not UTF-8, so never an address.
    response = await client.post(
        "/login/code",
        data=b"email=%ED%A0%80%40example.com",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 422
    assert await response.get_json() == {"error": "invalid_email"}


@pytest.mark.parametrize(
    "fields",
    [
        {"code": "12345\ud800"},
        {"code": "\ud800" * 6},
        {"next": "/rooms/\ud800"},
    ],
)
async def test_lone_surrogates_in_other_login_fields(
    client: QuartClient, smtp: SmtpSink, caplog: pytest.LogCaptureFixture, fields: dict[str, str]
) -> None:
    await request_code(client)
    code = await read_code(smtp)
    body = {"email": EMAIL, "code": code, **fields}
    response = await client.post("/login", json=body)
    if "code" in fields:
        assert response.status_code == 400
        assert await response.get_json() == {"error": "invalid_code"}
        # The code was not used up by the bad try.
        response = await client.post("/login", json={"email": EMAIL, "code": code})
        assert response.status_code == 200
    else:
        assert response.status_code == 200
        assert await response.get_json() == {"status": "ok", "redirect": "/"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- every outcome looks the same from outside -------------------------------


CONNECTION_SETUP = {"HELLO", "CLIENT", "SELECT", "AUTH"}


async def test_every_outcome_does_the_same_work_in_the_request(
    start_app: StartApp, redis: Redis, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """What the request for a code does must not depend on who gets one: the same
    Redis commands, one log line, and nothing left running in the worker (before the
    outbox, the send started in the answering worker and was 2-3 ms slower;
    bench/login_timing.py measures that)."""
    caplog.set_level(logging.INFO, logger="quart_chat")
    app, client = await start_app(
        allowed_email_domains=["allowed.test"], code_failures_per_email_day=5
    )
    await redis.set(keys.login_code_failures("locked@allowed.test"), 5)
    assert (await request_code(client, "again@allowed.test")).status_code == 202
    await drain(app)
    # Park this worker's drainer so its polls do not mix into the requests' commands.
    app.hub.outbox.poll_seconds = 3600
    await asyncio.sleep(1.0)
    outcomes = {
        "issued": "new@allowed.test",
        "not_allowed": "eve@elsewhere.test",
        "resend_wait": "again@allowed.test",
        "locked": "locked@allowed.test",
    }
    seen: dict[str, list[str]] = {}
    log_lines: dict[str, int] = {}
    async with redis.monitor() as monitor:
        for outcome, email in outcomes.items():
            before = len(caplog.records)
            response = await request_code(client, email)
            assert (response.status_code, await response.get_json()) == (202, SENT)
            assert not app.background_tasks, outcome
            log_lines[outcome] = sum(
                1 for r in caplog.records[before:] if r.name.startswith("quart_chat")
            )
            marker = f"end-of-{outcome}"
            await redis.echo(marker)
            commands = []
            while True:
                info = await monitor.next_command()
                command = str(info["command"])
                if command == f"ECHO {marker}":
                    break
                name = command.split(" ", 1)[0].upper()
                # Lua's own calls differ by outcome inside the one script; a new
                # pool connection's handshake depends on the pool, not the outcome.
                if info["client_type"] != "lua" and name not in CONNECTION_SETUP:
                    commands.append(name)
            seen[outcome] = commands
    # The per-IP limit, then issue-and-queue, each by its registered SHA.
    assert seen["issued"] == ["EVALSHA", "EVALSHA"]
    assert all(commands == seen["issued"] for commands in seen.values()), seen
    assert set(log_lines.values()) == {1}, log_lines
    # Only the one address that gets a code has mail waiting.
    assert await redis.xlen(keys.MAIL_OUTBOX) == 1
    assert len(await redis.keys("{mail}:*")) == 2  # the stream and that one mail


async def test_a_refused_mail_does_not_block_a_new_code(
    client: QuartClient, app: ChatApp, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """Giving up on a mail ends the resend window, so asking again works at once
    (a mail still being retried keeps the window: it will arrive)."""
    caplog.set_level(logging.INFO, logger="quart_chat")
    smtp.inbox.refused.add(EMAIL)
    assert (await request_code(client)).status_code == 202
    await wait_for_log(caplog, r"gave up on login code mail \w+ to ada@example.com after 1 attempt")
    smtp.inbox.refused.clear()
    assert (await request_code(client)).status_code == 202
    code = await read_code(smtp)
    assert (await client.post("/login", json={"email": EMAIL, "code": code})).status_code == 200


# --- deactivated users ------------------------------------------------------


async def test_a_deactivated_address_gets_the_same_answer_and_no_mail(
    start_app: StartApp, smtp: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quart_chat")
    app, client = await start_app(code_resend_seconds=0)
    await log_in(client, smtp)
    user = await find_user_by_email(app.redis, EMAIL)
    assert user is not None
    # Logged in until deactivated: then that session is gone too.
    assert (await client.get("/whoami")).status_code == 200
    await set_deactivated(app.redis, user.id, True)
    assert (await client.get("/whoami")).status_code == 401
    answers = []
    for email in (EMAIL, "nobody@example.com"):
        response = await request_code(client, email)
        answers.append((response.status_code, await response.get_json()))
    assert answers == [(202, {"status": "sent", "resend_after": 0})] * 2
    await drain(app)
    assert len(smtp.messages_to(EMAIL)) == 1  # the one that logged in before
    assert "login code not sent to ada@example.com: the user is deactivated" in caplog.text
    # Reactivated, the address gets codes again.
    await set_deactivated(app.redis, user.id, False)
    assert (await request_code(client)).status_code == 202
    await read_code(smtp, count=2)


async def test_a_code_issued_before_deactivation_fails_like_a_wrong_one(
    start_app: StartApp, smtp: SmtpSink
) -> None:
    app, client = await start_app(code_resend_seconds=0)
    await log_in(client, smtp)
    await client.post("/logout")
    assert (await request_code(client)).status_code == 202
    code = await read_code(smtp, count=2)
    user = await find_user_by_email(app.redis, EMAIL)
    assert user is not None
    await set_deactivated(app.redis, user.id, True)
    for attempt in (code, wrong(code)):
        response = await client.post("/login", json={"email": EMAIL, "code": attempt})
        assert (response.status_code, await response.get_json()) == (
            400,
            {"error": "invalid_code"},
        )
    assert (await client.get("/whoami")).status_code == 401
    await set_deactivated(app.redis, user.id, False)
    assert (await request_code(client)).status_code == 202
    fresh = await read_code(smtp, count=3)
    response = await client.post("/login", json={"email": EMAIL, "code": fresh})
    assert response.status_code == 200
    assert (await (await client.get("/whoami")).get_json())["id"] == user.id


async def test_a_first_login_updates_generals_member_count_on_open_pages(
    start_app: StartApp, redis: Redis, smtp: SmtpSink
) -> None:
    app, _ = await start_app(code_resend_seconds=0)
    ann = await chatting.log_in(app, redis, "ann.watching@example.com")
    async with ann.socket() as ws:
        ready = await chatting.start(ws)
        before = ready["rooms"][0]["member_count"]
        await log_in(app.test_client(), smtp, "newcomer@example.com")
        changed = await chatting.receive_type(ws, "room")
        assert changed["room"]["id"] == "general"
        assert changed["room"]["member_count"] == before + 1
        assert "unread" not in changed["room"]  # the page keeps its own count
        # Logging in again is no news: the next frame on general is a message.
        client = app.test_client()
        assert (await request_code(client, "newcomer@example.com")).status_code == 202
        code = await read_code(smtp, "newcomer@example.com", count=2)
        again = await client.post("/login", json={"email": "newcomer@example.com", "code": code})
        assert again.status_code == 200
        assert (await chatting.send_text(ws, "hello", "c-1"))["text"] == "hello"
