#!/usr/bin/env python3
"""Small HTTP server for the HTTP client tests.

Listens on 127.0.0.1 with an ephemeral port, prints "PORT <n>" on stdout
once ready, and serves until stdin closes (so it never outlives the test)
or 60 seconds pass.

Routes:
  /ok              200 JSON {"ok": true} with header X-Test: yes
  /slow?ms=N       sleeps N ms (at most 10000), then 200 "slow"
  /big?n=N         200 with N bytes of a repeating pattern and Content-Length
  /stream?n=N      same bytes without Content-Length (close-delimited)
  /redirect        302 to http://elsewhere.invalid/target
  /echo            200 JSON: method, path, headers, body length and body
  /headers?n=N     200 with N extra response headers
  /status?code=N   an empty response with that status code
  /count           number of connections accepted so far, excluding this one
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyz"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops SYNs when the tests open many
    # connections at once, which costs a one-second retransmit.
    request_queue_size = 128

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connections = 0
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):
        # Clients that give up early (timeouts, size caps, cancels) are part
        # of the tests: a reset connection is not worth a traceback.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    def verify_request(self, request, client_address):
        with self.lock:
            self.connections += 1
        return True


def pattern(n):
    reps = n // len(PATTERN) + 1
    return (PATTERN * reps)[:n]


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections open, so the tests see whether the client
    # reuses them when it should not.
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send(self, code, body, ctype="text/plain", extra=None, length=True):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in extra or []:
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        n = int(q.get("n", "0"))
        if url.path == "/ok":
            return self.send(200, b'{"ok": true}', "application/json", [("X-Test", "yes")])
        if url.path == "/slow":
            time.sleep(min(int(q.get("ms", "1000")), 10000) / 1000.0)
            return self.send(200, b"slow")
        if url.path == "/big":
            return self.send(200, pattern(n))
        if url.path == "/stream":
            self.close_connection = True
            self.send(200, b"", extra=[("Connection", "close")], length=False)
            left = n
            while left > 0:
                chunk = pattern(min(left, 65536))
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                left -= len(chunk)
            return
        if url.path == "/redirect":
            return self.send(302, b"", extra=[("Location", "http://elsewhere.invalid/target")])
        if url.path == "/echo":
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            out = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_len": len(body),
                "body": body.decode("latin-1"),
            }
            return self.send(200, json.dumps(out).encode(), "application/json")
        if url.path == "/headers":
            return self.send(200, b"h", extra=[("X-H%d" % i, "v" * 10) for i in range(n)])
        if url.path == "/status":
            return self.send(int(q.get("code", "200")), b"")
        if url.path == "/count":
            with self.server.lock:
                count = self.server.connections - 1
            return self.send(200, str(count).encode())
        return self.send(404, b"not found")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = route


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("PORT %d" % srv.server_address[1], flush=True)
    # Stop when the test closes our stdin (or exits), or after a hard limit.
    done = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait(60)
    srv.shutdown()


if __name__ == "__main__":
    main()
