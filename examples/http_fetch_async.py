"""Fetch many URLs with an ``async def handle_job``: one asyncio loop per worker process,
``--threads`` requests in flight on each.

No internet needed: ``get_jobs`` starts a small demo HTTP server on 127.0.0.1 (this file run
as a script, in a process of its own) and yields the URLs of its pages. The server stops
when tm-run exits, however it exits: it stops once its stdin, a pipe from tm-run, closes.
The handler fetches each page with asyncio streams (standard library only) and checks it.

    tm-run examples/http_fetch_async.py 2 --threads 50
    tm-run examples/http_fetch_async.py 2 --threads 50 count=20000 port=8800
    tm-run examples/http_fetch_async.py 2 --threads 50 --resume    # after Ctrl-C or kill -9

The URLs are the jobs, so the port must stay the same for ``--resume`` to find them again:
it is a fixed ``port=`` (default 8765), not a random one. If that port is taken, pick
another with ``port=N``.

``python examples/http_fetch_async.py 8765`` runs the server alone, until Ctrl-D or Ctrl-C;
``get_jobs`` uses a demo server it finds on its port rather than start one. That is the way
to run ``--retry-failed``, which replays the failures file without calling ``get_jobs``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import http.client
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

HOST = "127.0.0.1"


def page(number: int) -> bytes:
    """The body of page ``number``, so the handler can check what it got."""
    return b"page %d %s\n" % (number, hashlib.sha256(b"%d" % number).hexdigest().encode())


def get_jobs(last: str | None = None, count: str = "1000", port: str = "8765") -> Iterator[str]:
    """The URLs of pages 0 .. count-1 of the demo server, from ``last`` (inclusive) on."""
    start_server(int(port))
    first = int(last.rpartition("/")[2]) if last is not None else 0
    for number in range(first, int(count)):
        yield f"http://{HOST}:{port}/pages/{number}"


async def fetch(url: str, timeout: float = 30) -> tuple[int, bytes]:
    """``(status, body)`` of a GET over HTTP/1.0, with asyncio streams."""
    parts = urlsplit(url)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            writer.write(f"GET {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
            await writer.drain()
            response = await reader.read()  # HTTP/1.0: the server closes after the body
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


async def handle_job(url: str) -> None:
    status, body = await fetch(url)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status}")
    if body != page(int(url.rpartition("/")[2])):
        raise ValueError(f"GET {url}: unexpected body {body[:60]!r}")


# The demo server. It runs in a process of its own rather than a thread of tm-run, whose
# parent process must stay single-threaded to fork replacement workers safely.

_server: subprocess.Popen[bytes] | None = None


def demo_server_at(port: int) -> bool:
    """Whether a demo server already answers on ``port`` (one started by hand, say)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/pages/0")
        return conn.getresponse().read() == page(0)
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def start_server(port: int) -> None:
    """Start the demo server on ``port``, unless one is there, and wait until it listens;
    it stops when this process exits."""
    global _server
    if _server is not None or demo_server_at(port):
        return
    _server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # Out of the terminal's process group: Ctrl-C is for tm-run, which then finishes
        # the jobs in flight, and they need the server.
        start_new_session=True,
    )
    assert _server.stdout is not None
    if not _server.stdout.readline().startswith(b"listening"):
        _server.wait()
        _server = None
        raise RuntimeError(
            f"the demo server could not listen on {HOST}:{port} (see above); "
            "is the port taken? Pass another with port=N"
        )
    atexit.register(stop_server)


def stop_server() -> None:
    if _server is not None and _server.stdin is not None:
        _server.stdin.close()  # the server's cue to stop
        _server.wait(timeout=10)


class PageHandler(http.server.BaseHTTPRequestHandler):
    served = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        prefix, _, number = self.path.rpartition("/")
        if prefix != "/pages" or not number.isdigit():
            self.send_error(404)
            return
        body = page(int(number))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with self.lock:
            PageHandler.served += 1

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown tm-run's own output


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # many workers x --threads connect at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed client: expected
            super().handle_error(request, client_address)


def serve(port: int) -> None:
    """Serve pages until stdin closes (tm-run exited, or Ctrl-D when run by hand)."""
    try:
        server = Server((HOST, port), PageHandler)
    except OSError as exc:
        sys.exit(f"demo server: cannot listen on {HOST}:{port}: {exc.strerror}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on http://{HOST}:{port}/pages/<n>", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # by hand: Ctrl-C stops it too
        sys.stdin.buffer.read()  # returns at end of file
    server.shutdown()
    print(f"demo server: {PageHandler.served:,} pages served", file=sys.stderr, flush=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
