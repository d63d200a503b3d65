"""Typed settings, read from `CHAT_*` environment variables and `.env`.

Every variable is documented in `.env.example`; a bad value stops the server at
start with one readable line (see `SettingsError`).
"""

from __future__ import annotations

import enum
import logging
import math
import os
import secrets
from email.utils import getaddresses
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .addresses import normalize_domain, normalize_email

log = logging.getLogger(__name__)

SECRET_KEY_FILE = "secret_key"  # noqa: S105 - a file name, not a secret
PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "replace-me", "your-secret-key"}
MIN_SECRET_LENGTH = 32
MIN_SECRET_BITS = 128
KEY_GENERATION_ADVICE = (
    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
)

CommaList = Annotated[list[str], NoDecode]


class SmtpSecurity(enum.StrEnum):
    STARTTLS = "starttls"
    TLS = "tls"
    NONE = "none"


class SettingsError(Exception):
    """A setting is missing or invalid; the message is one human-readable line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHAT_", env_file=".env", extra="ignore", validate_default=True
    )

    secret_key: SecretStr | None = None
    redis_url: str | None = None
    data_dir: Path = Path("./var")

    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: SmtpSecurity = SmtpSecurity.STARTTLS
    smtp_from: str | None = None
    smtp_timeout_seconds: float = Field(30.0, gt=0)

    allowed_origins: CommaList = []
    cookie_secure: bool = True
    allowed_email_domains: CommaList = []
    allowed_emails: CommaList = []
    admin_emails: CommaList = []
    trusted_proxy_hops: int = Field(0, ge=0, le=10)
    session_days: int = Field(30, ge=1)

    code_ttl_seconds: int = Field(600, ge=10)
    code_max_attempts: int = Field(5, ge=1)
    code_resend_seconds: int = Field(60, ge=0)
    code_requests_per_ip_hour: int = Field(30, ge=1)
    login_attempts_per_ip_hour: int = Field(300, ge=1)
    code_failures_per_email_day: int = Field(100, ge=1)

    message_max_chars: int = Field(4000, ge=1, le=16000)
    messages_per_minute: int = Field(120, ge=1)
    backlog_requests_per_minute: int = Field(60, ge=1)
    max_sockets_per_user: int = Field(20, ge=1)
    max_sockets_per_address: int = Field(200, ge=1)
    history_per_room: int = Field(10000, ge=100)
    # permessage-deflate on chat sockets: off, as in the `ws` server for Node,
    # because each compressed socket keeps zlib state (~150 KiB) and every
    # frame is compressed once per recipient (bench/).
    ws_compression: bool = False
    # A socket that sent no frame for this long is closed (4408): its peer is
    # gone without a FIN (a laptop that slept), and it would otherwise hold
    # presence "online" and memory forever. The page pings every 10 s.
    ws_idle_timeout_seconds: float = Field(60.0, gt=0)
    # Email a user with unread DMs or mentions and no open socket for this long
    # (0: never); at most one such email per CHAT_NOTIFY_EMAIL_EVERY_MINUTES.
    notify_email_after_minutes: float = Field(10.0, ge=0)
    notify_email_every_minutes: float = Field(60.0, gt=0)
    # The app's address for links in notification emails; none: no link.
    public_url: str | None = None

    @field_validator(
        "allowed_origins",
        "allowed_email_domains",
        "allowed_emails",
        "admin_emails",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
                raise ValueError(f"{origin!r} is not an origin like https://chat.example.com")
        return [origin.lower() for origin in value]

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme, _, rest = value.partition("://")
        if scheme not in ("http", "https") or not rest or rest.startswith("/") or " " in value:
            raise ValueError(f"{value!r} is not an address like https://chat.example.com/")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @field_validator("smtp_host", "smtp_username", "smtp_from")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        raw = value.get_secret_value()
        if raw.lower() in PLACEHOLDER_SECRETS:
            raise ValueError(f"is a placeholder; {KEY_GENERATION_ADVICE}")
        problem = secret_key_problem(raw)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("allowed_emails", "admin_emails")
    @classmethod
    def _normalize_emails(cls, value: list[str]) -> list[str]:
        normalized = []
        for item in value:
            address = normalize_email(item)
            if address is None:
                raise ValueError(f"{item!r} is not an email address like ada@example.com")
            normalized.append(address)
        return normalized

    @field_validator("allowed_email_domains")
    @classmethod
    def _normalize_domains(cls, value: list[str]) -> list[str]:
        normalized = []
        for item in value:
            domain = normalize_domain(item.removeprefix("@"))
            if domain is None:
                raise ValueError(f"{item!r} is not a mail domain like example.com")
            normalized.append(domain)
        return normalized

    @model_validator(mode="after")
    def _smtp_from_required(self) -> Settings:
        if self.smtp_host and not self.smtp_from:
            raise ValueError("CHAT_SMTP_FROM is required when CHAT_SMTP_HOST is set")
        if self.smtp_from and self.envelope_sender is None:
            raise ValueError(
                "CHAT_SMTP_FROM must be one address like chat@example.com "
                "or 'quart-chat <chat@example.com>'"
            )
        return self

    @property
    def envelope_sender(self) -> str | None:
        """The bare address of CHAT_SMTP_FROM, given to SMTP as MAIL FROM, or None if
        it is not exactly one valid address (with an optional display name)."""
        if not self.smtp_from:
            return None
        parsed = getaddresses([self.smtp_from])
        if len(parsed) != 1:
            return None
        return normalize_email(parsed[0][1])

    @property
    def session_seconds(self) -> int:
        return self.session_days * 86400

    def secret(self) -> str:
        """The signing key; `ensure_secret_key` must have filled it in."""
        if self.secret_key is None:
            raise SettingsError("CHAT_SECRET_KEY: not set and no key was generated")
        return self.secret_key.get_secret_value()


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning pydantic's error into one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(describe_error(error)) from None


def describe_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(loc) for loc in item["loc"])
        name = f"CHAT_{field.upper()}" if field else "settings"
        message = item["msg"].removeprefix("Value error, ")
        given = item.get("input")
        shown = "" if not field or "secret" in field or "password" in field else f" (got {given!r})"
        if not field:
            parts.append(message)
        else:
            parts.append(f"{name}: {message}{shown}")
    return "; ".join(parts)


def ensure_secret_key(settings: Settings) -> Settings:
    """Fill in a generated secret key kept in the data dir, shared by all workers."""
    if settings.secret_key is not None:
        return settings
    path = settings.data_dir / SECRET_KEY_FILE
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
    else:
        key = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w") as file:
            file.write(key + "\n")
        log.warning(
            "CHAT_SECRET_KEY is not set: generated one and saved it in %s (mode 0600). "
            "Set CHAT_SECRET_KEY to keep sessions valid if the data dir is lost.",
            path,
        )
    if secret_key_problem(key):
        raise SettingsError(f"{path}: the stored secret key is too weak; delete the file")
    return settings.model_copy(update={"secret_key": SecretStr(key)})


def secret_key_problem(key: str) -> str | None:
    """Why `key` is too weak to sign sessions and codes, or None.

    There is no measuring the entropy of one string, but there is an upper
    bound: a key whose shortest repeating unit is p characters long, drawn
    from k distinct characters, holds at most p * log2(k) bits. Keys whose
    bound is under 128 bits are refused: all one character, blanks, a short
    word or pattern repeated. Generated keys (token_urlsafe(48): ~340 bits by
    this bound; 64 hex digits: ~256) pass easily. A 32-digit hex key, with
    exactly 128 random bits, rarely shows all 16 digits and is refused: use
    64 hex digits or token_urlsafe.
    """
    if len(key) < MIN_SECRET_LENGTH:
        return f"must be at least {MIN_SECRET_LENGTH} characters; {KEY_GENERATION_ADVICE}"
    period = _shortest_period(key)
    bits = period * math.log2(len(set(key))) if len(set(key)) > 1 else 0.0
    if bits < MIN_SECRET_BITS:
        return (
            f"is too predictable (at most {bits:.0f} bits of entropy, "
            f"{MIN_SECRET_BITS} needed); {KEY_GENERATION_ADVICE}"
        )
    return None


def _shortest_period(text: str) -> int:
    """The length of the shortest unit that `text` repeats (len(text) if none)."""
    for period in range(1, len(text) // 2 + 1):
        if all(text[i] == text[i - period] for i in range(period, len(text))):
            return period
    return len(text)
