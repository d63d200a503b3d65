"""Stand-in for axllent/mailpit: SMTP on :1025 and a small part of mailpit's JSON API on :8025.

GET /api/v1/messages             {"total", "messages": [{"ID", "From", "To", "Subject", "Created"}]}
GET /api/v1/message/<ID|latest>  the same fields plus "Text" and "HTML"
Mail is kept in memory only; there is no web UI.
"""

import email
import email.policy
import itertools
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

MESSAGES: list[dict[str, Any]] = []
LOCK = threading.Lock()
IDS = itertools.count(1)
SUMMARY = ("ID", "From", "To", "Subject", "Created")


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        entry = {
            "ID": str(next(IDS)),
            "From": {"Address": envelope.mail_from},
            "To": [{"Address": address} for address in envelope.rcpt_tos],
            "Subject": str(msg.get("Subject", "")),
            "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "Text": text.get_content() if text else "",
            "HTML": html.get_content() if html else "",
        }
        with LOCK:
            MESSAGES.insert(0, entry)
        return "250 Message accepted for delivery"


class Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with LOCK:
            messages = list(MESSAGES)
        if self.path.rstrip("/") == "/api/v1/messages":
            summaries = [{key: m[key] for key in SUMMARY} for m in messages]
            self._json(200, {"total": len(messages), "messages": summaries})
        elif self.path.startswith("/api/v1/message/"):
            key = self.path.rsplit("/", 1)[1]
            found = messages[:1] if key == "latest" else [m for m in messages if m["ID"] == key]
            if found:
                self._json(200, found[0])
            else:
                self._json(404, {"error": "not found"})
        else:
            self._json(404, {"error": "not found"})

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


if __name__ == "__main__":
    # PID 1 in its container: without a handler, SIGTERM is ignored and `docker stop` waits 10 s.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    Controller(Handler(), hostname="0.0.0.0", port=1025).start()
    print("mailpit stand-in: SMTP :1025, API :8025", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 8025), Api).serve_forever()
