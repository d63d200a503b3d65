"""Browser-facing protections: security headers and the same-origin check.

The origin check guards state-changing POSTs (CSRF) and the WebSocket handshake
(cross-site WebSocket hijacking) alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from quart import Response
from werkzeug.datastructures import Headers

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def own_origin(scheme: str, host: str) -> str:
    http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return f"{http_scheme}://{host}".lower()


def is_allowed_origin(
    headers: Headers, scheme: str, host: str, extra_origins: Iterable[str]
) -> bool:
    """False for a request a browser made on behalf of another site.

    `Sec-Fetch-Site: cross-site` is decisive where browsers send it; otherwise
    the Origin must be ours or configured. A request without Origin did not
    come from a cross-site page (browsers always send it on POST and
    WebSocket), so it is allowed.
    """
    if headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return False
    origin = headers.get("Origin")
    if origin is None:
        return True
    origin = origin.lower()
    return origin == own_origin(scheme, host) or origin in extra_origins


def safe_redirect_target(target: str | None, default: str = "/") -> str:
    """`target` if it is a path on this site, else `default`: never an open redirect.

    Browsers read `\\` as `/` and drop tabs and newlines, so `/\\evil.example`
    or `/<TAB>/evil.example` would leave the site; such targets are refused.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or any(ord(char) < 0x20 or ord(char) == 0x7F for char in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target
