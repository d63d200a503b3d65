"""The application factory: wiring only, no work at import time."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from hypercorn.middleware import ProxyFixMiddleware
from quart_auth import QuartAuth

from .base import ChatApp
from .blueprints import auth, chat, ops
from .config import Settings, SettingsError, ensure_secret_key, load_settings
from .errors import register_error_handlers
from .realtime.hub import ChatHub
from .realtime.middleware import ChatSocketRoute
from .realtime.wire import use_lean_connections, use_permessage_deflate
from .security import add_security_headers
from .storage import open_redis
from .web import SessionUser

# A full garbage collection walks every live object: a worker with a thousand
# sockets stalled ~170 ms per pass (bench/), which under load came every ~10 s
# and set the p99 latency. The young generation counts net
# allocations, so a larger one lets the transient objects of a fan-out burst
# (futures, frames, handles) die before they are promoted and full passes
# become rare; cyclic garbage is still collected.
WORKER_GC_THRESHOLDS = (50_000, 20, 10)

PACKAGE_DIR = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """Find `templates/` or `static/`: inside the package when installed from a
    wheel, else at the repo root (a source checkout or editable install)."""
    bundled = PACKAGE_DIR / name
    return bundled if bundled.is_dir() else PACKAGE_DIR.parent / name


def create_app(settings: Settings | None = None) -> ChatApp:
    settings = ensure_secret_key(settings or load_settings())
    redis_url = settings.redis_url
    if redis_url is None:
        raise SettingsError(
            "CHAT_REDIS_URL: not set; run `quart-chat serve`, which starts an embedded Redis"
        )
    app = ChatApp(
        __name__,
        template_folder=str(asset_dir("templates")),
        static_folder=str(asset_dir("static")),
    )
    app.settings = settings
    app.secret_key = settings.secret()
    app.config.update(
        QUART_AUTH_COOKIE_SECURE=settings.cookie_secure,
        QUART_AUTH_COOKIE_SAMESITE="Lax",
        QUART_AUTH_COOKIE_HTTP_ONLY=True,
        QUART_AUTH_DURATION=settings.session_seconds,
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    # One QuartAuth per app rather than a module-level one: init_app copies the
    # cookie settings onto the extension, and tests build apps with different ones.
    quart_auth = QuartAuth(app, user_class=SessionUser)

    app.register_blueprint(ops.blueprint)
    app.register_blueprint(auth.blueprint)
    app.register_blueprint(chat.blueprint)
    register_error_handlers(app)
    app.after_request(add_security_headers)

    @app.context_processor
    async def page_settings() -> dict[str, int]:
        # The chat page's composer counts towards the limit, which no frame carries.
        return {"max_chars": settings.message_max_chars}

    @app.before_serving
    async def open_connections() -> None:
        app.redis = open_redis(redis_url)
        app.hub = ChatHub(settings, app.redis, redis_url)
        await app.hub.start()

    @app.after_serving
    async def close_connections() -> None:
        await app.hub.stop()
        await app.redis.aclose()

    # `/ws` is served below Quart, where an idle socket costs far less memory.
    app.asgi_app = ChatSocketRoute(app, quart_auth, app.asgi_app)  # type: ignore[method-assign]
    if settings.trusted_proxy_hops:
        # Rewrites the client address and scheme from X-Forwarded-* for exactly
        # this many proxies; with 0 hops those headers are ignored entirely.
        app.asgi_app = ProxyFixMiddleware(  # type: ignore[method-assign]
            app.asgi_app, mode="legacy", trusted_hops=settings.trusted_proxy_hops
        )
    return app


def create_worker_app() -> ChatApp:
    """Entry point for each Hypercorn worker process started by `quart-chat serve`."""
    configure_logging()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    settings = load_settings()
    use_permessage_deflate(settings.ws_compression)
    use_lean_connections()
    return create_app(settings)


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
