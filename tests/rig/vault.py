"""A HashiCorp Vault KV v2 endpoint for tests (no Vault server can be
installed here), following the documented HTTP API as far as the service
uses it:

- ``GET /v1/<mount>/data/<path>``: ``200 {"data": {"data": {...},
  "metadata": {"version": N, ...}}}``; ``404 {"errors": []}`` when there is
  no such secret (with the metadata when its latest version was deleted);
- ``POST`` / ``PUT /v1/<mount>/data/<path>`` with ``{"data": {...},
  "options": {"cas": N}}``: writes version N+1 and answers ``200 {"data":
  {"version": N+1, ...}}``; with ``cas`` not equal to the current version
  (0: the secret must not exist) ``400 {"errors": ["check-and-set parameter
  did not match the current version"]}``;
- ``X-Vault-Token`` is required on every request: ``403 {"errors":
  ["permission denied"]}`` otherwise;
- other mounts or paths: ``404``.

Served by Klein on ``127.0.0.1`` from the test's reactor (so a ``twistd``
subprocess reaches it while the test waits on the reactor). Test controls
make it slow, stall in the middle of a body, answer oversized bodies or
errors, or change the document between a client's read and its write.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Optional

from klein import Klein
from twisted.internet import defer, task
from twisted.web.server import Site

CAS_MISMATCH = "check-and-set parameter did not match the current version"
DEFAULT_MOUNT = "kv"


class VaultKV2:
    """One KV v2 secrets engine mounted at ``mount``.

    :ivar documents: ``path -> list of versions`` (a version is the data
        mapping, or ``None`` once deleted).
    :ivar requests: ``(method, path, had a valid token)`` of every request.
    :ivar delay_s: answer every request after this long.
    :ivar stall: write the headers and half a body, then never finish.
    :ivar pad_to: pad every answer to at least this many bytes (valid JSON).
    :ivar fail_status: answer every request with this status (e.g. 503).
    :ivar before_write: called with the path before a write is checked: a
        test simulates another writer there.
    """

    app = Klein()

    def __init__(self, reactor: Any, token: str = "test-vault-token", mount: str = DEFAULT_MOUNT):
        self.reactor = reactor
        self.token = token
        self.mount = mount
        self.documents: dict[str, list[Optional[dict[str, Any]]]] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.delay_s = 0.0
        self.stall = False
        self.pad_to = 0
        self.fail_status: Optional[int] = None
        self.before_write: Optional[Callable[[str], None]] = None
        self._port: Any = None
        self._stalled: list[defer.Deferred] = []
        self.addr = ""

    # -- serving --------------------------------------------------------------

    def start(self) -> str:
        site = Site(self.app.resource())
        site.noisy = False
        self._port = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addr = f"http://127.0.0.1:{self._port.getHost().port}"
        return self.addr

    def stop(self) -> defer.Deferred:
        for d in self._stalled:
            if not d.called:
                d.cancel()
        self._stalled = []
        port, self._port = self._port, None
        return defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)

    # -- test helpers -----------------------------------------------------------

    def put(self, path: str, data: dict[str, Any]) -> int:
        """Write a version directly (as the app would); returns its number.
        ``path`` is the logical path, without ``<mount>/data/``."""
        versions = self.documents.setdefault(path, [])
        versions.append(dict(data))
        return len(versions)

    def read(self, path: str) -> Optional[dict[str, Any]]:
        versions = self.documents.get(path)
        return dict(versions[-1]) if versions and versions[-1] is not None else None

    def delete_latest(self, path: str) -> None:
        """Soft-delete the latest version (KV v2 ``DELETE``)."""
        self.documents[path][-1] = None

    def tenant_path(self, tenant: str) -> str:
        """The logical path of the service's default template."""
        return f"tenants/{tenant}/secrets"

    # -- the API --------------------------------------------------------------------

    @app.route("/v1/<path:rest>", methods=["GET", "POST", "PUT"])
    def handle(self, request: Any, rest: str) -> Any:
        method = request.method.decode("ascii")
        token = request.getHeader(b"x-vault-token")
        valid = token is not None and token.decode("utf-8", "replace") == self.token
        self.requests.append((method, rest, valid))
        if self.delay_s:
            return task.deferLater(self.reactor, self.delay_s, self._answer, request, rest, valid)
        return self._answer(request, rest, valid)

    def _answer(self, request: Any, rest: str, valid: bool) -> Any:
        method = request.method.decode("ascii")
        if self.fail_status is not None:
            return self._json(request, self.fail_status, {"errors": ["injected failure"]})
        if not valid:
            return self._json(request, 403, {"errors": ["permission denied"]})
        prefix = f"{self.mount}/data/"
        if not rest.startswith(prefix) or len(rest) == len(prefix):
            return self._json(request, 404, {"errors": []})
        path = rest[len(prefix):]
        if method == "GET":
            return self._get(request, path)
        return self._write(request, path)

    def _metadata(self, versions: list[Optional[dict[str, Any]]]) -> dict[str, Any]:
        deleted = versions[-1] is None
        return {
            "created_time": "2026-01-01T00:00:00.000000Z",
            "custom_metadata": None,
            "deletion_time": "2026-01-02T00:00:00.000000Z" if deleted else "",
            "destroyed": False,
            "version": len(versions),
        }

    def _get(self, request: Any, path: str) -> Any:
        versions = self.documents.get(path)
        if not versions:
            return self._json(request, 404, {"errors": []})
        if versions[-1] is None:
            # A deleted latest version: 404, but with its metadata.
            return self._json(request, 404, {"data": {"data": None,
                                                      "metadata": self._metadata(versions)}})
        return self._json(request, 200, {
            "request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False,
            "lease_duration": 0, "wrap_info": None, "warnings": None, "auth": None,
            "data": {"data": dict(versions[-1]), "metadata": self._metadata(versions)},
        })  # fmt: skip

    def _write(self, request: Any, path: str) -> Any:
        try:
            body = json.loads(request.content.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return self._json(request, 400, {"errors": ["failed to parse JSON input"]})
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return self._json(request, 400, {"errors": ["no data provided"]})
        if self.before_write is not None:
            self.before_write(path)
        versions = self.documents.setdefault(path, [])
        options = body.get("options") or {}
        if "cas" in options:
            try:
                cas = int(options["cas"])
            except (TypeError, ValueError):
                return self._json(request, 400, {"errors": ["invalid cas"]})
            if cas != len(versions):
                return self._json(request, 400, {"errors": [CAS_MISMATCH]})
        versions.append(dict(data))
        meta = self._metadata(versions)
        return self._json(request, 200, {"request_id": str(uuid.uuid4()), "data": meta})

    def _json(self, request: Any, status: int, doc: dict[str, Any]) -> Any:
        if self.pad_to:
            doc = dict(doc, padding="x" * self.pad_to)
        body = json.dumps(doc).encode("utf-8")
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        if self.stall:
            # Headers and half the body, then silence: a client without an
            # overall deadline would wait forever.
            request.setHeader(b"content-length", str(len(body)).encode("ascii"))
            request.write(body[: len(body) // 2])
            d: defer.Deferred = defer.Deferred(lambda _d: None)
            self._stalled.append(d)
            d.addErrback(lambda _f: None)
            return d
        return body
