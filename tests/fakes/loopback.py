"""start/stop/url for a fake Google API served over real HTTP on 127.0.0.1 (a free port)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackServer:
    """Mixed into a fake: ``handler`` is its request handler class, which finds the fake as
    ``self.fake``; ``thread_name`` names the serving thread."""

    handler: type[BaseHTTPRequestHandler]  # a class attribute or a property
    thread_name = "fake-api"
    _server: ThreadingHTTPServer | None = None
    port = 0

    def start(self) -> Any:
        handler = type("Handler", (self.handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
