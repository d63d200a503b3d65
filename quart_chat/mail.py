"""Outgoing mail: what a message is, the login code mail, and the two ways to send.

Nothing here is called from a request: requests put mail in the outbox
(`quart_chat/outbox.py`), and the outbox drainer hands it to a mailer.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from .config import Settings, SmtpSecurity

log = logging.getLogger(__name__)

APP_NAME = "quart-chat"


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """One message to send. `to` holds normalised addresses (quart_chat/addresses.py):
    they are the SMTP envelope recipients as they are, never parsed from a header."""

    to: tuple[str, ...]
    subject: str
    text: str
    html: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"to": list(self.to), "subject": self.subject, "text": self.text, "html": self.html}
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> OutgoingMail:
        data = json.loads(raw)
        return cls(tuple(data["to"]), data["subject"], data["text"], data["html"])


class Mailer(Protocol):
    async def send(self, mail: OutgoingMail) -> None: ...


def code_mail(to: str, code: str, ttl_seconds: int) -> OutgoingMail:
    minutes = max(1, ttl_seconds // 60)
    return OutgoingMail(
        to=(to,),
        subject=f"Your {APP_NAME} login code: {code}",
        text=(
            f"Your {APP_NAME} login code is {code}\n\n"
            f"It expires in {minutes} minutes and works once.\n"
            "If you did not ask for it, ignore this email.\n"
        ),
        html=(
            '<!doctype html><html><body style="font-family:sans-serif">'
            f"<p>Your {APP_NAME} login code is</p>"
            f'<p style="font-size:28px;letter-spacing:4px"><strong>{html.escape(code)}</strong></p>'
            f"<p>It expires in {minutes} minutes and works once. "
            "If you did not ask for it, ignore this email.</p></body></html>"
        ),
    )


def build_message(sender: str, mail: OutgoingMail) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = mail.subject
    message["From"] = sender
    message["To"] = ", ".join(mail.to)
    message.set_content(mail.text)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    return message


class ConsoleMailer:
    """Writes mail to the server log: for trying the app without an SMTP server."""

    def __init__(self) -> None:
        log.warning(
            "CHAT_SMTP_HOST is not set: login codes are written to this log, not emailed. "
            "Set CHAT_SMTP_HOST and CHAT_SMTP_FROM before real people use this server."
        )

    async def send(self, mail: OutgoingMail) -> None:
        log.warning(
            "mail to %s (console mailer): %s\n%s", ", ".join(mail.to), mail.subject, mail.text
        )


class SmtpMailer:
    """Sends over SMTP with the configured security; never falls back to plain text."""

    def __init__(self, settings: Settings, tls_context: ssl.SSLContext | None = None) -> None:
        assert settings.smtp_host and settings.smtp_from and settings.envelope_sender
        self.settings = settings
        self.tls_context = tls_context

    async def send(self, mail: OutgoingMail) -> None:
        settings = self.settings
        assert settings.smtp_host and settings.smtp_from
        message = build_message(settings.smtp_from, mail)
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        # aiosmtplib's own timeout is per socket operation; this bounds the whole send.
        async with asyncio.timeout(settings.smtp_timeout_seconds):
            await aiosmtplib.send(
                message,
                # Explicit envelope: left out, aiosmtplib would read recipients from
                # the headers, where one typed "address" can name several.
                sender=settings.envelope_sender,
                recipients=list(mail.to),
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
