"""A tiny RFC 7662 token-introspection endpoint for Dovecot's oauth2 passdb.

Dovecot's auth process calls this endpoint while a test is waiting for the
login reply, so the endpoint cannot share the test's reactor thread with
blocking clients (imaplib). It runs in its own thread on ``http.server``.

Tokens are registered by tests with :meth:`IntrospectionServer.add_token`;
anything else is reported ``{"active": false}``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        token = parse_qs(body).get("token", [""])[0]
        # introspection_mode = auth sends the token as a bearer header instead.
        auth = self.headers.get("Authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        self._answer(token)

    def do_GET(self) -> None:  # noqa: N802
        # introspection_mode = get appends the token to the URL.
        query = self.path.partition("?")[2]
        token = parse_qs(query).get("token", [""])[0]
        auth = self.headers.get("Authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        self._answer(token)

    def _answer(self, token: str) -> None:
        owner = self.server.owner
        reply = owner.lookup(token)
        data = json.dumps(reply).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # Request lines would carry nothing secret, but keep test output quiet.
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: IntrospectionServer


class IntrospectionServer:
    """
    RFC 7662 endpoint on ``127.0.0.1`` with an OS-chosen port, served from a
    daemon thread.

    :ivar url: the introspection URL to give Dovecot.
    :ivar requests: how many introspection requests have been answered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, dict[str, object]] = {}
        self.requests = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> None:
        """Bind and start serving (idempotent)."""
        if self._httpd is not None:
            return
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        port = httpd.server_address[1]
        self.url = f"http://127.0.0.1:{port}/introspect"
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="introspection",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add_token(self, token: str, username: str, active: bool = True) -> None:
        """
        Register ``token`` as belonging to ``username``.

        :param active: ``False`` registers a revoked/expired token.
        """
        with self._lock:
            self._tokens[token] = {"active": active, "username": username}

    def remove_token(self, token: str) -> None:
        """Forget ``token``; it becomes ``{"active": false}``."""
        with self._lock:
            self._tokens.pop(token, None)

    def lookup(self, token: str) -> dict[str, object]:
        """:return: the RFC 7662 answer for ``token``."""
        with self._lock:
            self.requests += 1
            entry = self._tokens.get(token)
            if entry is None or not entry["active"]:
                return {"active": False}
            return {"active": True, "username": entry["username"], "scope": "imap"}
