"""The code email, sent by the real SMTP mailer to a real SMTP server.

The mailer raises when a send fails; the outbox (tests/test_outbox.py) logs and retries.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from quart_chat.config import Settings
from quart_chat.mail import OutgoingMail, SmtpMailer, code_mail

from .conftest import make_settings
from .servers import free_port
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
    await SmtpMailer(settings).send(code_mail("ada@example.com", "123456", 600))
    message = smtp.wait_for_message("ada@example.com")
    assert code_in(message) == "123456"
    assert "quart-chat" in str(message["Subject"])
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None and "expires in 10 minutes" in plain.get_content()
    assert html is not None and "<strong>123456</strong>" in html.get_content()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1, made with the openssl command line."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def starttls_smtp(self_signed: tuple[Path, Path]) -> Iterator[SmtpSink]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*self_signed)
    sink = SmtpSink(tls_context=server_context).start()
    try:
        yield sink
    finally:
        sink.stop()


def mailer_settings(sink: SmtpSink, tmp_path: Path, security: str) -> Settings:
    env = sink.env()
    return make_settings(
        "redis://127.0.0.1:1/0",
        tmp_path,
        smtp_host=env["CHAT_SMTP_HOST"],
        smtp_port=int(env["CHAT_SMTP_PORT"]),
        smtp_security=security,
        smtp_from=env["CHAT_SMTP_FROM"],
        smtp_timeout_seconds=10,
    )


async def test_starttls_delivers(starttls_smtp: SmtpSink, tmp_path: Path) -> None:
    # Only this test trusts any certificate; the mailer's default context verifies.
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    settings = mailer_settings(starttls_smtp, tmp_path, "starttls")
    await SmtpMailer(settings, tls_context=client_context).send(
        code_mail("ada@example.com", "654321", 600)
    )
    assert code_in(starttls_smtp.wait_for_message("ada@example.com")) == "654321"


async def test_starttls_verifies_the_certificate_by_default(
    starttls_smtp: SmtpSink, tmp_path: Path
) -> None:
    settings = mailer_settings(starttls_smtp, tmp_path, "starttls")
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        await SmtpMailer(settings).send(code_mail("ada@example.com", "654321", 600))
    assert starttls_smtp.messages == []


async def test_plain_mailer_refused_by_a_server_that_requires_starttls(
    starttls_smtp: SmtpSink, tmp_path: Path
) -> None:
    settings = mailer_settings(starttls_smtp, tmp_path, "none")
    with pytest.raises(aiosmtplib.SMTPResponseException, match="STARTTLS"):
        await SmtpMailer(settings).send(code_mail("ada@example.com", "654321", 600))
    assert starttls_smtp.messages == []


async def test_starttls_is_required_not_opportunistic(smtp: SmtpSink, tmp_path: Path) -> None:
    # A server that does not offer STARTTLS must not get the code in plain text.
    settings = mailer_settings(smtp, tmp_path, "starttls")
    with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS"):
        await SmtpMailer(settings).send(code_mail("ada@example.com", "654321", 600))
    assert smtp.messages == []


async def test_envelope_is_the_given_recipients_never_the_header(
    smtp: SmtpSink, tmp_path: Path
) -> None:
    """aiosmtplib reads recipients from To/Cc/Bcc when none are given: the mailer
    always gives them, so a header can never add one."""
    settings = mailer_settings(smtp, tmp_path, "none")
    mail = OutgoingMail(to=("ada@example.com",), subject="hello", text="hi", html=None)
    await SmtpMailer(settings).send(mail)
    await SmtpMailer(settings).send(
        OutgoingMail(to=("bob@example.com", "eve@example.com"), subject="s", text="t")
    )
    assert smtp.envelope_recipients == [
        ["ada@example.com"],
        ["bob@example.com", "eve@example.com"],
    ]
    assert smtp.messages[0].get_body(preferencelist=("html",)) is None


async def test_smtp_down_raises_a_connect_error(tmp_path: Path) -> None:
    settings = make_settings(
        "redis://127.0.0.1:1/0",
        tmp_path,
        smtp_host="127.0.0.1",
        smtp_port=free_port(),
        smtp_security="none",
        smtp_from="chat@example.test",
    )
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await SmtpMailer(settings).send(code_mail("ada@example.com", "654321", 600))
