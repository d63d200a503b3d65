"""One worker process of `quart-chat serve`: Hypercorn serving the app on the launcher's socket.

The launcher binds the listening socket once and starts each worker as
`python -m quart_chat.worker FD` with that socket inherited as file descriptor
FD, so every worker accepts from the same queue and no second server can bind
the port. On SIGTERM the worker closes every chat socket with 1012 ("service
restart": clients reconnect at once, to another worker or server, and resume
with `join after`) and stops accepting; once the connections are gone,
Hypercorn stops the app, which withdraws this worker's presence.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

from .app import create_worker_app
from .base import ChatApp

log = logging.getLogger(__name__)

# The exit status of a worker that could not start serving: the launcher
# stops instead of restarting it in a loop (gunicorn's WORKER_BOOT_ERROR).
EXIT_BOOT_FAILED = 3
CLOSE_SERVICE_RESTART = 1012
MAX_WEBSOCKET_FRAME = 64 * 1024
# Each worker's listen() sets the shared socket's backlog; Hypercorn's default
# of 100 would refuse part of the burst of reconnects after a restart.
LISTEN_BACKLOG = 2048
# Time for HTTP requests still running after the chat sockets have closed.
GRACEFUL_SECONDS = 5
KEEP_ALIVE_SECONDS = 30


def hypercorn_config(fd: int) -> Config:
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.backlog = LISTEN_BACKLOG
    # Hypercorn closes the socket with 1009 for bigger frames (SPEC §5).
    config.websocket_max_message_size = MAX_WEBSOCKET_FRAME
    config.graceful_timeout = GRACEFUL_SECONDS
    # Hypercorn closes a connection whose request has not been read within this
    # (5 s by default), and a worker absorbing a reconnect storm can take longer
    # than that to get to a fresh socket's handshake: clients saw their
    # connection dropped before any answer (tests/test_storm.py).
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.accesslog = None
    # Route Hypercorn's messages through our logging setup instead of its own
    # stderr handler, which would print every line twice.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve_until_stopped(app: ChatApp, config: Config) -> bool:
    """Serve until SIGTERM; False if the app never got as far as serving."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    serving = False

    async def shutdown_trigger() -> None:
        # Hypercorn calls this once the app has started and the socket is served.
        nonlocal serving
        serving = True
        await stop.wait()
        # Hypercorn then stops accepting and gives open connections its graceful
        # timeout before cutting them without a close frame (1006 at the client).
        # Closing every chat socket now, and any still being opened, means they
        # all end within that time, each with a close frame.
        app.hub.fanout.close_all(CLOSE_SERVICE_RESTART)

    try:
        await serve(app, config, shutdown_trigger=shutdown_trigger)
    except Exception:
        if serving:
            raise
        log.exception("worker failed to start")
    return serving


def main(argv: list[str]) -> int:
    try:
        app = create_worker_app()
    except Exception:
        log.exception("worker failed to start")
        return EXIT_BOOT_FAILED
    served = asyncio.run(serve_until_stopped(app, hypercorn_config(int(argv[1]))))
    return 0 if served else EXIT_BOOT_FAILED


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
