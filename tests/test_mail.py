"""The code email, sent by the real SMTP mailer to a real SMTP server."""

from __future__ import annotations

from pathlib import Path

from quart_chat.mail import SmtpMailer

from .conftest import make_settings
from .smtp import SmtpSink, code_in


async def test_smtp_mailer_delivers_plain_and_html(smtp: SmtpSink, tmp_path: Path) -> None:
    env = smtp.env()
    settings = make_settings(
        "redis://127.0.0.1:1/0",
        tmp_path,
        smtp_host=env["CHAT_SMTP_HOST"],
        smtp_port=int(env["CHAT_SMTP_PORT"]),
        smtp_security="none",
        smtp_from=env["CHAT_SMTP_FROM"],
    )
    await SmtpMailer(settings).send_code("ada@example.com", "123456", 600)
    message = smtp.wait_for_message("ada@example.com")
    assert code_in(message) == "123456"
    assert "quart-chat" in str(message["Subject"])
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None and "expires in 10 minutes" in plain.get_content()
    assert html is not None and "<strong>123456</strong>" in html.get_content()
