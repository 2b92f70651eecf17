"""A tiny real HTTP server standing in for a delivery host, for the fetch tests.

Routes (all GET):
- `/file.png`: a small PNG-ish body with `Content-Type: image/png`;
- `/status/{code}`: an empty answer with that status;
- `/bytes/{n}`: n bytes with Content-Length; `/bytes-unsized/{n}`: n bytes, no length (ends at close);
- `/slow/{seconds}`: waits, then answers; `/drip/{seconds}`: sends one byte every 0.05 s for that long;
- `/redirect?to=URL`: 302 to URL; `/hops/{n}`: n redirects in a row, then `/file.png`;
- `/headers`: the request's headers as JSON.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PNG_BODY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        route, _, arg = parts.path.strip("/").partition("/")
        if route == "file.png":
            self._answer(200, PNG_BODY, "image/png")
        elif route == "status":
            self._answer(int(arg), b"", "text/plain")
        elif route == "bytes":
            self._answer(200, b"x" * int(arg), "application/octet-stream")
        elif route == "bytes-unsized":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(b"x" * int(arg))
        elif route == "slow":
            time.sleep(float(arg))
            self._answer(200, PNG_BODY, "image/png")
        elif route == "drip":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            deadline = time.monotonic() + float(arg)
            while time.monotonic() < deadline:
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        elif route == "redirect":
            self._redirect(parse_qs(parts.query)["to"][0])
        elif route == "hops":
            remaining = int(arg)
            self._redirect(f"/hops/{remaining - 1}" if remaining > 1 else "/file.png")
        elif route == "headers":
            body = json.dumps({name.lower(): value for name, value in self.headers.items()}).encode()
            self._answer(200, body, "application/json")
        else:
            self._answer(404, b"", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that give up (size cap, deadline) hang up mid-answer; that is the point of those tests.
        pass


@contextmanager
def file_server() -> Iterator[int]:
    """Serve the routes above on 127.0.0.1; yield the port."""
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
