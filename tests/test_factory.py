"""The application factory wires settings, Redis, blueprints and headers, and does nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from quart.testing import QuartClient

from quart_chat.app import asset_dir, create_app
from quart_chat.config import Settings, SettingsError

from .conftest import TEST_SECRET, make_settings


def test_factory_uses_the_given_settings(settings: Settings) -> None:
    app = create_app(settings)
    assert app.settings is settings
    assert app.secret_key == settings.secret()
    assert app.config["QUART_AUTH_COOKIE_SECURE"] is False
    assert app.config["QUART_AUTH_COOKIE_SAMESITE"] == "Lax"
    assert app.config["QUART_AUTH_DURATION"] == 30 * 86400
    assert "ops" in app.blueprints


def test_factory_does_not_touch_redis_until_serving(tmp_path: Path) -> None:
    # Nothing listens on this port; building the app must still succeed.
    app = create_app(make_settings("redis://127.0.0.1:1/0", tmp_path))
    assert not hasattr(app, "redis")


def test_factory_refuses_to_run_without_redis(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CHAT_REDIS_URL"):
        create_app(Settings(_env_file=None, data_dir=tmp_path, secret_key=TEST_SECRET))  # type: ignore[call-arg]


def test_templates_and_static_are_found() -> None:
    assert asset_dir("templates").is_dir()
    assert asset_dir("static").is_dir()


async def test_every_response_carries_security_headers(client: QuartClient) -> None:
    response = await client.get("/healthz")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


async def test_unknown_route_is_404(client: QuartClient) -> None:
    response = await client.get("/no-such-page")
    assert response.status_code == 404
