"""A small OAuth2 authorization server for end-to-end tests.

It plays the identity provider of an OAuth2 IMAP mailbox:

- ``GET /authorize`` checks the client, the redirect URI and the PKCE
  challenge method, and redirects back at once with ``code`` and ``state``
  (consent is implied: there is no user to ask);
- ``POST /token`` takes ``authorization_code`` (client id/secret, code,
  redirect URI, PKCE verifier against the stored S256 challenge) and
  ``refresh_token`` grants (rotation: the old refresh token is revoked, a
  revoked one gets ``invalid_grant``), and registers every access token it
  issues with the Dovecot rig's introspection endpoint, so the token logs in.

Like :mod:`tests.rig.introspection` it serves from its own thread: the
service process calls it while the test thread may block on an HTTP request
of its own. Everything is recorded for assertions; the tokens are random.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit


def s256(verifier: str) -> str:
    """The RFC 7636 S256 challenge of ``verifier``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _id_token(account: str) -> str:
    """An unsigned-looking JWT naming ``account``: the service reads only the
    payload of an id_token that came straight from the token endpoint."""
    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"preferred_username": account, "upn": account, "sub": "opaque-subject"}
    return part({"alg": "RS256", "typ": "JWT"}) + "." + part(claims) + ".c2ln"


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path, _, query = self.path.partition("?")
        if path != "/authorize":
            self._json(404, {"error": "not_found"})
            return
        params = {k: v[0] for k, v in parse_qs(query).items()}
        status, location, body = self.server.owner.authorize(params)
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        data = json.dumps(body).encode("utf-8")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.partition("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace")
        if path != "/token":
            self._json(404, {"error": "not_found"})
            return
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        status, body = self.server.owner.token(form, self.headers.get("Authorization", ""))
        self._json(status, body)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: OAuthServer


class OAuthServer:
    """An authorization server for one client on ``127.0.0.1`` (OS-chosen port).

    :param introspection: the rig's
        :class:`~tests.rig.introspection.IntrospectionServer`; issued access
        tokens are registered there for ``username``.
    :param client_id: the only client it knows.
    :param client_secret: that client's secret (form field or HTTP Basic).
    :param username: whose mailbox the tokens open.
    :ivar expires_in: ``expires_in`` of the next token responses (seconds);
        change it between grants.
    :ivar grants: the ``grant_type`` of every *successful* token request, in order.
    :ivar refused: ``(grant_type, error)`` of every refused token request.
    :ivar authorize_requests: the query parameters of every authorize request.
    :ivar access_tokens: every access token issued, in order.
    :ivar refresh_tokens: every refresh token issued, in order.
    :ivar signed_in_as: when set, token responses carry an OpenID Connect
        ``id_token`` naming this account (``preferred_username`` and
        ``upn``, as Microsoft sends them), which may differ from the
        ``username`` the access tokens open (a shared mailbox's delegate).
    """

    def __init__(
        self, introspection: Any, client_id: str, client_secret: str, username: str
    ) -> None:
        self.introspection = introspection
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.expires_in = 3600
        self.signed_in_as: Optional[str] = None
        self._lock = threading.Lock()
        self._codes: dict[str, dict[str, str]] = {}
        self._live_refresh: set[str] = set()
        self.grants: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.access_tokens: list[str] = []
        self.refresh_tokens: list[str] = []
        self._gate = threading.Event()
        self._gate.set()
        self.refresh_waiting = 0
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.base_url = ""

    # -- serving --------------------------------------------------------------

    def start(self) -> None:
        if self._httpd is not None:
            return
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="oauth-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._gate.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for token in self.access_tokens:
                self.introspection.remove_token(token)

    @property
    def authorize_url(self) -> str:
        return self.base_url + "/authorize"

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    # -- test controls ----------------------------------------------------------

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far becomes ``invalid_grant``."""
        with self._lock:
            self._live_refresh.clear()

    def hold_refresh(self) -> None:
        """Make ``refresh_token`` requests wait (a slow token endpoint)
        until :meth:`release_refresh`; :attr:`refresh_waiting` counts them."""
        self._gate.clear()

    def release_refresh(self) -> None:
        self._gate.set()

    def issue(self) -> tuple[str, str]:
        """``(access token, refresh token)`` as if a consent had just
        happened elsewhere (the main app's own flow): the access token logs
        in, the refresh token is live. Not counted in :attr:`grants`."""
        access = "at-" + secrets.token_urlsafe(32)
        refresh = "rt-" + secrets.token_urlsafe(32)
        with self._lock:
            self._live_refresh.add(refresh)
            self.access_tokens.append(access)
            self.refresh_tokens.append(refresh)
        self.introspection.add_token(access, self.username)
        return access, refresh

    def token_requests(self) -> int:
        with self._lock:
            return len(self.grants) + len(self.refused)

    # -- endpoints ----------------------------------------------------------------

    def authorize(self, params: dict[str, str]) -> tuple[int, Optional[str], dict[str, Any]]:
        """``(status, Location, body)`` of an authorize request."""
        with self._lock:
            self.authorize_requests.append(dict(params))
        if params.get("client_id") != self.client_id:
            return 400, None, {"error": "unauthorized_client"}
        redirect = params.get("redirect_uri", "")
        if not redirect.startswith(("http://", "https://")):
            return 400, None, {"error": "invalid_request", "detail": "redirect_uri"}
        if params.get("response_type") != "code":
            return 400, None, {"error": "unsupported_response_type"}
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return 400, None, {"error": "invalid_request", "detail": "PKCE S256 required"}
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = {
                "redirect_uri": redirect,
                "challenge": params["code_challenge"],
            }
        location = _with_query(redirect, {"code": code, "state": params.get("state", "")})
        return 302, location, {}

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        """``(status, body)`` of a token request."""
        grant = form.get("grant_type", "")
        if grant == "refresh_token" and not self._gate.is_set():
            with self._lock:
                self.refresh_waiting += 1
            # Bounded, so a forgotten release cannot wedge the server thread.
            self._gate.wait(30)
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ":"
            client_id, _, secret = decoded.partition(":")
        with self._lock:
            if client_id != self.client_id or not hmac.compare_digest(
                secret.encode(), self.client_secret.encode()
            ):
                return self._refuse(grant, "invalid_client", 401)
            if grant == "authorization_code":
                entry = self._codes.pop(form.get("code", ""), None)  # codes are single-use
                if entry is None:
                    return self._refuse(grant, "invalid_grant")
                if form.get("redirect_uri") != entry["redirect_uri"]:
                    return self._refuse(grant, "invalid_grant")
                verifier = form.get("code_verifier", "")
                if not verifier or not hmac.compare_digest(s256(verifier), entry["challenge"]):
                    return self._refuse(grant, "invalid_grant")
            elif grant == "refresh_token":
                old = form.get("refresh_token", "")
                if old not in self._live_refresh:
                    return self._refuse(grant, "invalid_grant")
                self._live_refresh.discard(old)  # rotation
            else:
                return self._refuse(grant, "unsupported_grant_type")
            access = "at-" + secrets.token_urlsafe(32)
            refresh = "rt-" + secrets.token_urlsafe(32)
            self._live_refresh.add(refresh)
            self.access_tokens.append(access)
            self.refresh_tokens.append(refresh)
            self.grants.append(grant)
            expires_in = self.expires_in
        self.introspection.add_token(access, self.username)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh,
            "scope": "imap",
        }
        if self.signed_in_as:
            body["id_token"] = _id_token(self.signed_in_as)
        return 200, body

    def _refuse(self, grant: str, error: str, status: int = 400) -> tuple[int, dict[str, Any]]:
        self.refused.append((grant, error))
        return status, {"error": error}
