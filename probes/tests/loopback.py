"""Real servers on loopback for the probe-mechanics tests; no traffic ever leaves the host.

Each helper is a context manager; the test modules wrap them in their own fixtures. Sockets
are listening before the helper returns, so no test has to wait for a server to come up.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SLOW_DELAY_S = 0.2  # how long /slow (and /slow-redirect) wait before sending the headers


class _Handler(BaseHTTPRequestHandler):
    """Routes: /health 200, /status/<code>, /slow (200 after SLOW_DELAY_S), /slow-redirect."""

    protocol_version = "HTTP/1.1"
    # Without TCP_NODELAY, a small write queued behind the TLS session tickets waits for the
    # client's delayed ACK (~40 ms) and the test would measure Nagle instead of the server.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self.server.client_ports.append(self.client_address[1])
        if self.path == "/slow":
            time.sleep(SLOW_DELAY_S)  # the server under test is slow; nothing here waits on a test
            self._answer(200)
        elif self.path == "/slow-redirect":
            time.sleep(SLOW_DELAY_S)
            self._answer(302, location="/health")
        elif self.path.startswith("/status/"):
            self._answer(int(self.path.removeprefix("/status/")))
        else:
            self._answer(200 if self.path == "/health" else 404)

    def _answer(self, status: int, location: str = "") -> None:
        body = b"ok\n"
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs as soon as a test starts a few hundred transfers.
    request_queue_size = 1024

    def __init__(self, host: str, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.client_ports: list[int] = []  # one entry per request: distinct ports = fresh connections
        super().__init__((host, 0), handler)


class HttpServer:
    """An HTTP(S) server on a thread; ``url(path)`` addresses it."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self._server = _Server(host, _Handler)
        if tls is not None:
            # The handshake happens on the handler's thread, not in the accept loop.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.port: int = self._server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def client_ports(self) -> list[int]:
        return self._server.client_ports

    def url(self, path: str) -> str:
        authority = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{authority}:{self.port}{path}"

    def __enter__(self) -> HttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@contextmanager
def closed_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        yield sock.getsockname()[1]


@contextmanager
def silent_port(host: str = "127.0.0.1", backlog: int = 64) -> Iterator[int]:
    """A port where the kernel completes the handshake but nobody ever answers a request.

    Nothing calls accept(): the kernel accepts up to ``backlog`` connections on its own.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        sock.listen(backlog)
        yield sock.getsockname()[1]


@contextmanager
def black_hole(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that drops SYNs, so connecting times out, like a firewalled peer.

    Linux drops a SYN when the listener's accept queue is full; backlog 0 holds one
    connection, which the helper makes itself and never accepts.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket(family))
        listener.bind((host, 0))
        listener.listen(0)
        stack.enter_context(socket.create_connection(listener.getsockname()[:2], timeout=1))
        yield listener.getsockname()[1]


def self_signed_context(folder: Path) -> ssl.SSLContext:
    """A server TLS context with a throw-away self-signed certificate for 127.0.0.1."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context
