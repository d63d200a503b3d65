"""A real SMTP server (aiosmtpd) that keeps what it receives, for reading login codes in tests."""

from __future__ import annotations

import email
import email.policy
import re
import ssl
import threading
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from .servers import free_port

CODE_PATTERN = re.compile(r"\b(\d{6})\b")


class _Inbox:
    """What arrived, also indexed by envelope recipient: a bench logs in a thousand users
    and each waits for its own mail, so a lookup must not scan (and parse) them all."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        # Each message's SMTP envelope recipients exactly as the client gave them.
        self.envelope_recipients: list[list[str]] = []
        self.by_recipient: dict[str, list[EmailMessage]] = {}
        self.arrived = threading.Condition()
        # Recipients refused with a permanent 550, as a server does for unknown mailboxes.
        self.refused: set[str] = set()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.refused:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.arrived:
            self.messages.append(message)
            self.envelope_recipients.append(list(envelope.rcpt_tos))
            for recipient in envelope.rcpt_tos:
                self.by_recipient.setdefault(recipient.lower(), []).append(message)
            self.arrived.notify_all()
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        """Mail delivered to `address`, oldest first; call with `arrived` held."""
        return self.by_recipient.get(address.lower(), [])


class SmtpSink:
    """aiosmtpd on 127.0.0.1 in its own thread. `tls_context` enables STARTTLS (required)."""

    def __init__(self, tls_context: ssl.SSLContext | None = None, **smtp_kwargs: Any) -> None:
        self.inbox = _Inbox()
        self.port = free_port()
        kwargs: dict[str, Any] = dict(smtp_kwargs)
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=True)
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kwargs)
        self.started = False

    def start(self) -> SmtpSink:
        self.controller.start()
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self.controller.stop()
            self.started = False
        else:
            # A sink that never started (a server that is "down") still owns a loop.
            self.controller.loop.close()

    @property
    def messages(self) -> list[EmailMessage]:
        with self.inbox.arrived:
            return list(self.inbox.messages)

    @property
    def envelope_recipients(self) -> list[list[str]]:
        """Per message received, its envelope recipients as sent (not lower-cased)."""
        with self.inbox.arrived:
            return [list(rcpts) for rcpts in self.inbox.envelope_recipients]

    def messages_to(self, address: str) -> list[EmailMessage]:
        """The mail delivered to `address` (its SMTP envelope recipient), oldest first."""
        with self.inbox.arrived:
            return list(self.inbox.to(address))

    def wait_for_message(self, address: str, count: int = 1, timeout: float = 15.0) -> EmailMessage:
        """Block until `count` messages reached `address`; return the newest."""
        with self.inbox.arrived:
            if self.inbox.arrived.wait_for(lambda: len(self.inbox.to(address)) >= count, timeout):
                return self.inbox.to(address)[-1]
        raise TimeoutError(f"no mail #{count} for {address} within {timeout}s")

    def wait_for_code(self, address: str, count: int = 1, timeout: float = 15.0) -> str:
        return code_in(self.wait_for_message(address, count, timeout))

    def env(self) -> dict[str, str]:
        """CHAT_* settings that point a server at this sink (plain SMTP, local only)."""
        return {
            "CHAT_SMTP_HOST": "127.0.0.1",
            "CHAT_SMTP_PORT": str(self.port),
            "CHAT_SMTP_SECURITY": "none",
            "CHAT_SMTP_FROM": "quart-chat <chat@example.test>",
        }


def code_in(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    match = CODE_PATTERN.search(body.get_content())
    assert match, body.get_content()
    return match.group(1)
