"""A small HTTP server that gives the demo's prober something to measure.

    python -m netring_site.demo_targets --port 8759

``/ok`` answers at once, ``/slow?ms=N`` waits N milliseconds before the headers (a known TTFB),
``/status/N`` answers with status N.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        status = 200
        if url.path == "/slow":
            delay = min(int(parse_qs(url.query).get("ms", ["300"])[0] or 300), 10_000)
            time.sleep(delay / 1000)
        elif url.path.startswith("/status/") and url.path[8:].isdigit():
            status = max(200, min(599, int(url.path[8:])))
        elif url.path != "/ok":
            status = 404
        body = b"ok\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8759)
    args = parser.parse_args()
    ThreadingHTTPServer((args.bind, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
