"""A store that fails on demand: a small HTTP proxy on loopback in front of a real S3 endpoint
(moto's server), for the fault-injection tests. ``mode`` says what it does to each request now:

- ``pass``: forwards it to the endpoint, answers what the endpoint answered;
- ``403``: S3's AccessDenied, as with expired credentials;
- ``503``: S3's SlowDown, as an overloaded store;
- ``reset``: closes the connection without an answer, as a store that cannot be reached.

``requests`` counts what reached it, by mode, so a test can tell the fault was met.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERRORS = {
    "403": (403, "AccessDenied", "Access Denied"),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}


class FaultProxy:
    """``url`` forwards to ``upstream`` while ``mode`` is ``pass``."""

    def __init__(self, upstream: str) -> None:
        self.mode = "pass"
        self.requests: Counter[str] = Counter()
        target = urlsplit(upstream)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                mode = proxy.mode
                proxy.requests[mode] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if mode == "reset":
                    self.close_connection = True
                    self.connection.close()
                    return
                if mode in ERRORS:
                    status, code, message = ERRORS[mode]
                    xml = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>{message}</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    headers["Host"] = f"{target.hostname}:{target.port}"
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    self.send_response(answer.status)
                    for k, v in answer.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long ``stop`` may wait for the loop to see it
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
