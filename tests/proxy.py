"""A TCP relay on 127.0.0.1 that plays the network between a browser and its server.

Real sockets both ways; the relay only decides when bytes move:
- `freeze()`: the connections open now stop carrying bytes in either direction
  without closing, the half-open connection a laptop that slept or changed
  Wi-Fi leaves behind. Connections made afterwards work.
- `hold()` / `release()`: new connections are accepted but not forwarded until
  released, a server that is slow to come back.
- `upstream`: the port new connections go to (a load balancer moving them to
  another replica during a rolling restart).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from .servers import free_port


@dataclass(eq=False)
class _Link:
    client: socket.socket
    server: socket.socket | None = None
    frozen: threading.Event = field(default_factory=threading.Event)


class TcpRelay:
    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self._stopped = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpRelay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def freeze(self) -> None:
        with self._lock:
            for link in self._links:
                link.frozen.set()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            self._released.set()
            # shutdown wakes the thread blocked in accept(); close alone would not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            for link in self._links:
                for sock in (link.client, link.server):
                    if sock is not None:
                        sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(client)
            with self._lock:
                if self._stopped.is_set():
                    client.close()
                    return
                self._links.append(link)
            threading.Thread(target=self._connect, args=(link,), daemon=True).start()

    def _connect(self, link: _Link) -> None:
        self._released.wait()
        try:
            link.server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            link.server.settimeout(None)
        except OSError:
            link.client.close()
            return
        with self._lock:
            if self._stopped.is_set():
                link.server.close()
                return
        server = link.server
        threading.Thread(target=self._pump, args=(link, server, link.client), daemon=True).start()
        self._pump(link, link.client, server)

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if link.frozen.is_set():
                # Nothing more crosses, and neither end learns of it.
                self._stopped.wait()
                return
            if not data:
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                return
            try:
                target.sendall(data)
            except OSError:
                return
