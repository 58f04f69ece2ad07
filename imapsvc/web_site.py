"""The HTTP server around the Klein app: request-size limit and security
headers, for every route (Klein's 404s included).

Twisted's :class:`~twisted.web.http.HTTPChannel` buffers a request's whole
body before routing (to a temporary file above 100 kB), so a size check in a
handler comes too late: an unauthenticated 64 MiB POST would already sit in
the container's temporary-files volume. :class:`GuardedRequest` refuses at
the moment the length is known (``gotLength``: ``Content-Length``) or, for a
chunked body, as the chunks arrive, answers 413 and closes the connection;
it never creates a temporary file.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.web import server

#: Default cap on a request body; the JSON bodies of the API are a few hundred bytes.
DEFAULT_MAX_BODY = 64 * 1024

#: On every response. The service serves JSON and redirects, never a page
#: that needs scripts, styles from elsewhere or framing.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (
        b"content-security-policy",
        b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    # The OAuth callback URL carries the code: never let it travel on as Referer.
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


def _too_large_response(hsts: bool) -> bytes:
    body = b'{"error": "request body too large", "success": false}'
    headers = [
        b"HTTP/1.1 413 Request Entity Too Large",
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    headers += [name + b": " + value for name, value in SECURITY_HEADERS]
    if hsts:
        headers.append(HSTS[0] + b": " + HSTS[1])
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


class GuardedRequest(server.Request):
    """A request that refuses bodies over ``site.max_body`` before buffering
    them and sets the security headers on every response."""

    _refused = False
    _received = 0
    content: Any

    def _limits(self) -> tuple[int, bool]:
        site = getattr(self.channel, "site", None)
        return (
            getattr(site, "max_body", DEFAULT_MAX_BODY),
            bool(getattr(site, "hsts", False)),
        )

    def gotLength(self, length: Any) -> None:
        # Always in memory: a body is never allowed to grow past max_body,
        # so Twisted's temporary file (used above 100 kB or when chunked)
        # is never needed.
        self.content = BytesIO()
        limit, _ = self._limits()
        if length is not None and length > limit:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limit, _ = self._limits()
        if self._received > limit:
            self._refuse()
            return
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        self.content = BytesIO()
        # HTTPChannel answers "Expect: 100-continue" right after gotLength;
        # without the header it does not invite the body we refuse.
        self.requestHeaders.removeHeader(b"expect")
        _, hsts = self._limits()
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.write(_too_large_response(hsts))
            # Stops reading at once, flushes the 413, then closes.
            channel.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # already answered 413; the connection is closing
        super().requestReceived(command, path, version)

    def process(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        _, hsts = self._limits()
        if hsts or self.isSecure():
            self.setHeader(*HSTS)
        super().process()


def access_log_line(timestamp: str, request: Any) -> str:
    """The combined log format without the query string and the referrer:
    the OAuth routes carry the state and the authorization code there."""
    ip = getattr(request.getClientAddress(), "host", "-")
    agent = (request.getHeader(b"user-agent") or b"-").decode("ascii", "replace")[:200]
    path = (request.path or b"").decode("ascii", "replace")
    method = (request.method or b"-").decode("ascii", "replace")
    proto = (request.clientproto or b"-").decode("ascii", "replace")
    return (
        f'"{ip}" - - {timestamp} "{method} {path} {proto}" {request.code} '
        f'{request.sentLength or "-"} "-" {agent!r}'
    )


class GuardedSite(server.Site):
    """:class:`~twisted.web.server.Site` with :class:`GuardedRequest`.

    :param max_body: largest request body in bytes; larger ones get 413.
    :param hsts: send ``Strict-Transport-Security`` on every response (the
        service is reached over https through a proxy); over a direct TLS
        listener it is sent anyway.
    """

    requestFactory = GuardedRequest
    displayTracebacks = False

    def __init__(self, resource: Any, *, max_body: int = DEFAULT_MAX_BODY, hsts: bool = False,
                 **kw: Any) -> None:
        kw.setdefault("logFormatter", access_log_line)
        super().__init__(resource, **kw)
        self.max_body = max_body
        self.hsts = hsts
