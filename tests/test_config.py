"""Settings: defaults, parsing of every kind of value, and one-line errors."""

from __future__ import annotations

import os
import secrets
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from quart_chat.config import (
    Settings,
    SettingsError,
    SmtpSecurity,
    ensure_secret_key,
    load_settings,
)

from .conftest import TEST_SECRET


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.secret_key is None and settings.redis_url is None
    assert settings.data_dir == Path("./var")
    assert settings.smtp_port == 587 and settings.smtp_security is SmtpSecurity.STARTTLS
    assert settings.cookie_secure is True and settings.trusted_proxy_hops == 0
    assert (
        settings.code_ttl_seconds,
        settings.code_max_attempts,
        settings.code_resend_seconds,
    ) == (
        600,
        5,
        60,
    )
    assert settings.code_requests_per_ip_hour == 30
    assert settings.login_attempts_per_ip_hour == 300
    assert settings.code_failures_per_email_day == 100
    assert settings.session_days == 30 and settings.session_seconds == 30 * 86400
    assert settings.message_max_chars == 4000 and settings.messages_per_minute == 120
    assert settings.history_per_room == 10000
    assert settings.allowed_origins == [] and settings.allowed_emails == []


def test_reads_environment_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_SMTP_PORT", "2525")
    monkeypatch.setenv("CHAT_SMTP_SECURITY", "tls")
    monkeypatch.setenv("CHAT_ALLOWED_EMAIL_DOMAINS", "Example.com, corp.example ,")
    monkeypatch.setenv("CHAT_ALLOWED_ORIGINS", "https://chat.example.com")
    monkeypatch.setenv("CHAT_COOKIE_SECURE", "false")
    settings = load_settings()
    assert settings.smtp_port == 2525 and settings.smtp_security is SmtpSecurity.TLS
    assert settings.allowed_email_domains == ["example.com", "corp.example"]
    monkeypatch.setenv("CHAT_ALLOWED_EMAILS", "Ada@Example.COM")
    monkeypatch.setenv("CHAT_ALLOWED_EMAIL_DOMAINS", "@Bücher.example")
    monkeypatch.setenv("CHAT_SMTP_FROM", "quart-chat <Chat@Example.com>")
    settings = load_settings()
    assert settings.allowed_emails == ["ada@example.com"]
    assert settings.allowed_email_domains == ["xn--bcher-kva.example"]
    assert settings.envelope_sender == "chat@example.com"
    assert settings.allowed_origins == ["https://chat.example.com"]
    assert settings.cookie_secure is False


def test_reads_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CHAT_MESSAGES_PER_MINUTE=7\n")
    assert load_settings().messages_per_minute == 7


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CHAT_SMTP_PORT", "abc", "CHAT_SMTP_PORT: Input should be a valid integer"),
        ("CHAT_SMTP_SECURITY", "maybe", "CHAT_SMTP_SECURITY: Input should be 'starttls', 'tls' or"),
        ("CHAT_REDIS_URL", "http://x", "CHAT_REDIS_URL: must start with redis://"),
        ("CHAT_SECRET_KEY", "changeme", "CHAT_SECRET_KEY: is a placeholder"),
        ("CHAT_SECRET_KEY", "short", "CHAT_SECRET_KEY: must be at least 32 characters"),
        ("CHAT_ALLOWED_ORIGINS", "chat.example.com", "CHAT_ALLOWED_ORIGINS: 'chat.example.com'"),
        ("CHAT_SMTP_HOST", "smtp.example.com", "CHAT_SMTP_FROM is required"),
        ("CHAT_TRUSTED_PROXY_HOPS", "-1", "CHAT_TRUSTED_PROXY_HOPS: Input should be greater"),
        ("CHAT_SMTP_FROM", "a@example.com, b@example.com", "CHAT_SMTP_FROM must be one address"),
        ("CHAT_SMTP_FROM", "chat@localhost", "CHAT_SMTP_FROM must be one address"),
        ("CHAT_ALLOWED_EMAILS", "ada@example.com, <eve@evil.test>", "CHAT_ALLOWED_EMAILS: '<eve"),
        ("CHAT_ALLOWED_EMAIL_DOMAINS", "evil.test>", "CHAT_ALLOWED_EMAIL_DOMAINS: 'evil.test>'"),
        ("CHAT_ADMIN_EMAILS", "root", "CHAT_ADMIN_EMAILS: 'root' is not an email address"),
        ("CHAT_PUBLIC_URL", "chat.example.com", "CHAT_PUBLIC_URL: 'chat.example.com' is not an"),
        ("CHAT_NOTIFY_EMAIL_AFTER_MINUTES", "-1", "CHAT_NOTIFY_EMAIL_AFTER_MINUTES: Input should"),
        ("CHAT_NOTIFY_EMAIL_EVERY_MINUTES", "0", "CHAT_NOTIFY_EMAIL_EVERY_MINUTES: Input should"),
    ],
)
def test_bad_values_give_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_secret_values_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_SECRET_KEY", "short-but-secret")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "short-but-secret" not in str(caught.value)
    key = secrets.token_urlsafe(48)
    monkeypatch.setenv("CHAT_SECRET_KEY", key)
    assert key not in repr(load_settings())


def test_generated_secret_key_is_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "var")  # type: ignore[call-arg]
    first = ensure_secret_key(settings)
    key_file = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = ensure_secret_key(settings)
    assert first.secret() == second.secret()
    assert len(first.secret()) >= 32


def test_every_setting_is_documented_in_the_readme_and_env_example() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    example = (root / ".env.example").read_text()
    for field in Settings.model_fields:
        variable = f"CHAT_{field.upper()}"
        assert f"{variable}=" in example, variable
        # The README's table abbreviates a family: `CHAT_SMTP_HOST` / `_PORT` / ...
        suffix = "_" + variable.split("_", 2)[2]
        assert f"`{variable}`" in readme or f"`{suffix}`" in readme, variable


WEAK_SECRETS = [
    " " * 40,
    "a" * 32,
    "ab" * 32,
    "password" * 4,
    "0123456789abcdef" * 2,
    "Aa1!" * 10,
]


@pytest.mark.parametrize("weak", WEAK_SECRETS)
def test_low_entropy_secret_keys_are_refused(monkeypatch: pytest.MonkeyPatch, weak: str) -> None:
    monkeypatch.setenv("CHAT_SECRET_KEY", weak)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("CHAT_SECRET_KEY: ")
    assert "\n" not in message
    assert weak.strip() == "" or weak not in message


@pytest.mark.parametrize(
    "good",
    [
        TEST_SECRET,
        "browser-test-secret-" + "k" * 32,
        "multiworker-secret-" + "k" * 32,
        secrets.token_urlsafe(48),
        secrets.token_urlsafe(32),
        secrets.token_hex(32),
    ],
)
def test_keys_people_generate_are_accepted(monkeypatch: pytest.MonkeyPatch, good: str) -> None:
    monkeypatch.setenv("CHAT_SECRET_KEY", good)
    assert load_settings().secret() == good


@pytest.mark.parametrize("weak", [" " * 40, "a" * 32])
def test_serve_refuses_a_weak_secret_key_with_one_line(tmp_path: Path, weak: str) -> None:
    # Its own session, so that a server which wrongly starts is stopped whole.
    process = subprocess.Popen(
        [sys.executable, "-m", "quart_chat", "serve", "--workers", "1"],
        env={"PATH": "/usr/bin:/bin", "CHAT_SECRET_KEY": weak, "CHAT_DATA_DIR": str(tmp_path)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("quart-chat serve started with a weak CHAT_SECRET_KEY")
    assert process.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("quart-chat: error: CHAT_SECRET_KEY: ")
    assert weak.strip() == "" or weak not in stderr + stdout
    assert not (tmp_path / "redis").exists()


def test_a_weak_stored_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret_key").write_text("a" * 40 + "\n")
    settings = Settings(_env_file=None, data_dir=tmp_path / "var")  # type: ignore[call-arg]
    with pytest.raises(SettingsError, match="secret_key: the stored secret key is too weak"):
        ensure_secret_key(settings)
