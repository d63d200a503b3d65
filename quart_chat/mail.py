"""Sending the one-time login code: over SMTP, or to the log when no SMTP is set."""

from __future__ import annotations

import asyncio
import html
import logging
import ssl
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from .config import Settings, SmtpSecurity

log = logging.getLogger(__name__)

APP_NAME = "quart-chat"


class Mailer(Protocol):
    async def send_code(self, to: str, code: str, ttl_seconds: int) -> None: ...


def build_code_message(sender: str, to: str, code: str, ttl_seconds: int) -> EmailMessage:
    minutes = max(1, ttl_seconds // 60)
    message = EmailMessage()
    message["Subject"] = f"Your {APP_NAME} login code: {code}"
    message["From"] = sender
    message["To"] = to
    message.set_content(
        f"Your {APP_NAME} login code is {code}\n\n"
        f"It expires in {minutes} minutes and works once.\n"
        "If you did not ask for it, ignore this email.\n"
    )
    message.add_alternative(
        '<!doctype html><html><body style="font-family:sans-serif">'
        f"<p>Your {APP_NAME} login code is</p>"
        f'<p style="font-size:28px;letter-spacing:4px"><strong>{html.escape(code)}</strong></p>'
        f"<p>It expires in {minutes} minutes and works once. "
        "If you did not ask for it, ignore this email.</p></body></html>",
        subtype="html",
    )
    return message


class ConsoleMailer:
    """Writes codes to the server log: for trying the app without an SMTP server."""

    def __init__(self) -> None:
        log.warning(
            "CHAT_SMTP_HOST is not set: login codes are written to this log, not emailed. "
            "Set CHAT_SMTP_HOST and CHAT_SMTP_FROM before real people use this server."
        )

    async def send_code(self, to: str, code: str, ttl_seconds: int) -> None:
        log.warning("login code for %s: %s (console mailer)", to, code)


class SmtpMailer:
    """Sends over SMTP with the configured security; never falls back to plain text."""

    def __init__(self, settings: Settings, tls_context: ssl.SSLContext | None = None) -> None:
        assert settings.smtp_host and settings.smtp_from
        self.settings = settings
        self.tls_context = tls_context

    async def send_code(self, to: str, code: str, ttl_seconds: int) -> None:
        settings = self.settings
        assert settings.smtp_host and settings.smtp_from
        message = build_code_message(settings.smtp_from, to, code, ttl_seconds)
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        # aiosmtplib's own timeout is per socket operation; this bounds the whole send.
        async with asyncio.timeout(settings.smtp_timeout_seconds):
            await aiosmtplib.send(
                message,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=password,
                use_tls=settings.smtp_security is SmtpSecurity.TLS,
                start_tls=settings.smtp_security is SmtpSecurity.STARTTLS,
                tls_context=self.tls_context,
                timeout=settings.smtp_timeout_seconds,
            )


def make_mailer(settings: Settings) -> Mailer:
    if settings.smtp_host:
        return SmtpMailer(settings)
    return ConsoleMailer()


async def deliver_code(mailer: Mailer, to: str, code: str, ttl_seconds: int) -> None:
    """Send a code from a background task: a failure is logged with its reason, never raised,
    because the person who asked already has their (identical) answer."""
    try:
        await mailer.send_code(to, code, ttl_seconds)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
        reason = str(error) or "no answer within CHAT_SMTP_TIMEOUT_SECONDS"
        log.error("could not send the login code to %s: %s: %s", to, type(error).__name__, reason)
