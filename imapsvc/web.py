"""The HTTP surface (CONTRACT section 4), a Klein app built as an object.

Dependencies come through ``__init__``; tests drive it with
``treq.testing.StubTreq(app.resource())``. Every handler answers with JSON
(or a redirect / small page for the OAuth callback) and never with a
traceback; error texts are the components' secret-free messages.
"""

from __future__ import annotations

import hmac
import html
import json
import re
import uuid
from typing import Any, Callable, Optional

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from imapsvc.deferreds import with_deadline
from imapsvc.interfaces import ISink, IStore
from imapsvc.metrics import CONTENT_TYPE, render
from imapsvc.oauth import CALLBACK_PATH, START_PATH, OAuthError

_UUIDISH = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_MAX_BODY = 64 * 1024


def _detached(d: defer.Deferred) -> defer.Deferred:
    """``d``'s result in a Deferred whose cancellation does not reach ``d``.

    A deadline cancels what it waits for; cancelling a txpostgres query
    runs libpq's blocking ``PQcancel`` on the reactor thread, which freezes
    the whole process while the database is unreachable (a partition). The
    ping is left to finish (or fail) on its own instead.
    """
    out: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> None:
        if out.called:  # cancelled by the deadline: drop the late result
            return
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)

    d.addBoth(relay)
    return out


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else value


def _since(data: dict, action: str):  # type: ignore[no-untyped-def]
    """The ``since`` of a resync (``YYYY-MM-DD`` or ``1-Jan-2026``) as a date."""
    value = data.get("since")
    if value is None:
        return None
    if action != "resync":
        raise BadRequest("since is only for resync")
    if not isinstance(value, str):
        raise BadRequest("since must be a date string")
    from imapsvc.core.cursor import parse_since

    try:
        return parse_since(value)
    except ValueError as e:
        raise BadRequest(str(e)) from None


class BadRequest(Exception):
    pass


def _json(request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, sort_keys=True, default=str).encode("utf-8")


def _body(request) -> dict:
    raw = request.content.read(_MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > _MAX_BODY:
        raise BadRequest("request body too large")
    try:
        data = json.loads(raw.decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest("request body is not JSON") from e
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _oauth_refusal(request, e: OAuthError) -> bytes:
    """The browser-facing OAuth routes: a small page for a browser, JSON
    for anything else; either says what went wrong and nothing secret."""
    accept = (request.getHeader(b"accept") or b"").lower()
    if b"text/html" not in accept:
        return _json(request, e.status, {"success": False, "error": str(e), "code": e.code})
    request.setResponseCode(e.status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    page = (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Mailbox not connected"
        "</title></head><body><h1>The mailbox was not connected</h1>"
        f"<p>{html.escape(str(e))}</p><p>Error code: {html.escape(e.code)}</p>"
        "<p>Nothing was changed. Start the connection again from the application.</p>"
        "</body></html>"
    )
    return page.encode("utf-8")


def _binding_cookie(request, name: str, value: str, max_age: int) -> None:
    # HttpOnly: no script reads it; Secure: https only; SameSite=Lax: sent on
    # the provider's top-level redirect back to the callback, not on
    # cross-site subrequests.
    request.addCookie(
        name.encode("ascii"), value.encode("ascii"), path=b"/api/email/oauth/imap/",
        max_age=str(max_age).encode(), secure=True, httpOnly=True, sameSite="lax",
    )


def _ident(data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not _UUIDISH.match(value):
        raise BadRequest(f"{key} is missing or not an id")
    return value


class WebApp:
    """Routes: health, readiness, metrics, status, OAuth, admin actions."""

    app = Klein()
    log = Logger()

    def __init__(
        self,
        *,
        clock,
        admin,
        store: IStore,
        sink: ISink,
        registry,
        oauth_flow=None,
        admin_token: str = "",
        discovered: Callable[[], bool] = lambda: True,
        ready_deadline_s: float = 2.0,
        detailed_registry=None,
        requests: Any = None,
        deployment: Optional[Callable[[], defer.Deferred]] = None,
    ):
        self._clock = clock
        self._admin = admin
        self._store = store
        self._sink = sink
        self._registry = registry
        # /metrics with tenant/provider/folder labels: for the admin token only.
        self._detailed_registry = detailed_registry
        self._oauth = oauth_flow
        self._token = admin_token.encode("utf-8") if admin_token else b""
        self._discovered = discovered
        self._deadline = ready_deadline_s
        #: :class:`imapsvc.admin_requests.AdminRequests`: admin actions go to
        #: the provider's owner. ``None``: this process acts itself.
        self._requests = requests
        #: The deployment-wide status (every replica's folders) for /status.
        self._deployment = deployment

    def resource(self):
        return self.app.resource()

    # -- helpers --------------------------------------------------------------

    def _has_token(self, request) -> bool:
        """The request carries the admin bearer token (no response written)."""
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        return bool(self._token) and scheme.lower() == b"bearer" and hmac.compare_digest(
            given.strip(), self._token
        )

    def _authorized(self, request) -> Optional[bytes]:
        """``None`` when the bearer token matches, else the error response."""
        if not self._token:
            return _json(request, 403, {"success": False, "error": "admin API disabled"})
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            request.setHeader(b"www-authenticate", b"Bearer")
            return _json(request, 401, {"success": False, "error": "unauthorized"})
        return None

    @defer.inlineCallbacks
    def _admin_call(self, request, action: str):
        denied = self._authorized(request)
        if denied is not None:
            return denied
        try:
            data = _body(request)
            tenant, provider = _ident(data, "tenant"), _ident(data, "providerId")
            folder = data.get("folder")
            if folder is not None and not isinstance(folder, str):
                raise BadRequest("folder must be a string")
            since = _since(data, action)
        except BadRequest as e:
            return _json(request, 400, {"success": False, "error": str(e)})
        if since is not None:
            result = yield self._backfill(request, tenant, provider, folder, since)
            return result
        if self._requests is not None:
            result = yield self._routed(request, tenant, provider, action, folder)
            return result
        try:
            if action == "reconnect":
                result = yield self._admin.reconnect(tenant, provider)
            elif action == "resync":
                result = yield self._admin.resync(tenant, provider, folder)
            elif action in ("pause", "resume"):
                result = yield getattr(self._admin, action)(tenant, provider)
            else:
                result = yield self._admin.test_connection(tenant, provider)
        except Exception as e:
            self.log.warn("admin {action} failed: {err}", action=action, err=str(e))
            return _json(request, 500, {"success": False, "error": "internal error"})
        return _json(request, 200, result)

    @defer.inlineCallbacks
    def _routed(self, request, tenant: str, provider: str, action: str,
                folder: Optional[str]):
        """The action as a request row for the provider's owner; answers once
        applied (200, with when and by whom) or after the bounded wait (202,
        with the request id to poll)."""
        from imapsvc.admin_requests import UnknownProvider

        name = "test-connection" if action == "test" else action
        try:
            req = yield self._requests.submit(tenant, provider, name, folder)
        except UnknownProvider:
            return _json(request, 404, {"success": False, "error": "unknown provider"})
        except Exception as e:
            self.log.warn("admin {action} failed: {err}", action=name, err=str(e))
            return _json(request, 500, {"success": False, "error": "internal error"})
        return self._request_answer(request, req)

    @defer.inlineCallbacks
    def _backfill(self, request, tenant: str, provider: str, folder: Optional[str], since):
        """``resync`` with ``since``: the messages since that date are read
        again (cursors stay; the ledger keeps what was published from being
        published again). The request is stored for the folders, which read
        it at their next sync; a reconnect by the owner makes that now."""
        try:
            folders = yield self._store.request_backfill(tenant, provider, folder, since)
        except Exception as e:
            self.log.warn("admin backfill failed: {err}", err=str(e))
            return _json(request, 500, {"success": False, "error": "internal error"})
        if folders is None:
            return _json(request, 404, {"success": False, "error": "unknown provider"})
        doc: dict[str, Any] = {"success": True, "since": since.isoformat(), "folders": folders}
        try:
            if self._requests is not None:
                req = yield self._requests.submit(tenant, provider, "reconnect", None)
                woke = dict(req.result or {}) if req.applied_at is not None else None
                doc["wake"] = "pending" if woke is None else "applied"
                if req.applied_by:
                    doc["appliedBy"] = req.applied_by
            else:
                woke = yield self._admin.reconnect(tenant, provider)
                doc["wake"] = "applied"
        except Exception as e:
            self.log.warn("admin backfill wake-up failed: {err}", err=str(e))
            woke, doc["wake"] = None, "failed"
        if woke is not None:
            doc["running"] = bool(woke.get("success"))
        if not doc.get("running"):
            doc["note"] = "stored: the folders read it when the provider runs"
        return _json(request, 200, doc)

    def _request_answer(self, request, req) -> bytes:
        doc: dict[str, Any] = {
            "requestId": req.id,
            "tenant": req.tenant,
            "providerId": req.provider_id,
            "action": req.action,
            "requestedBy": req.requested_by,
            "requestedAt": _iso(req.created_at),
        }
        if req.folder:
            doc["folder"] = req.folder
        if req.applied_at is None:
            doc.update(
                status="pending",
                claimedBy=req.claimed_by,
                poll=f"/api/email/imap/requests/{req.id}?tenant={req.tenant}",
            )
            return _json(request, 202, doc)
        doc.update(dict(req.result or {}))
        doc.update(status="applied", appliedAt=_iso(req.applied_at), appliedBy=req.applied_by)
        return _json(request, 200, doc)

    # -- routes ---------------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request):
        return _json(request, 200, {"status": "ok"})

    @app.route("/health", methods=["GET"])
    def health(self, request):
        return _json(request, 200, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    @defer.inlineCallbacks
    def readyz(self, request):
        reasons = []
        for name, dep in (("database", self._store), ("event stream", self._sink)):
            try:
                yield with_deadline(
                    _detached(defer.maybeDeferred(dep.ping)), self._deadline, self._clock, name
                )
            except Exception as e:
                # The cause (libpq/Redis text: host names, users) goes to the
                # log only; the unauthenticated answer stays generic.
                self.log.warn("readiness: {name} unreachable: {err}", name=name, err=str(e))
                reasons.append(f"{name} unreachable")
        if not self._discovered():
            reasons.append("first provider discovery not done")
        if reasons:
            return _json(request, 503, {"ready": False, "reasons": reasons})
        return _json(request, 200, {"ready": True})

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        if self._detailed_registry is not None and self._has_token(request):
            return render(self._detailed_registry)
        return render(self._registry)

    @app.route("/status", methods=["GET"])
    @defer.inlineCallbacks
    def status(self, request):
        denied = self._authorized(request)
        if denied is not None:
            return denied
        doc = dict(self._admin.status())
        if self._deployment is not None:
            # Every provider and folder of the deployment, as the replicas
            # persisted them; "providers" above stays this replica's own.
            try:
                doc["deployment"] = yield with_deadline(
                    _detached(defer.maybeDeferred(self._deployment)), self._deadline,
                    self._clock, "database")
            except Exception as e:
                doc["deploymentError"] = f"deployment status unavailable: {e}"
        return _json(request, 200, doc)

    @app.route("/api/email/imap/requests/<request_id>", methods=["GET"])
    @defer.inlineCallbacks
    def admin_request(self, request, request_id):
        denied = self._authorized(request)
        if denied is not None:
            return denied
        if self._requests is None:
            return _json(request, 404, {"success": False, "error": "no admin requests here"})
        values = request.args.get(b"tenant") or [b""]
        try:
            tenant = _ident({"tenant": values[0].decode("utf-8", "replace")}, "tenant")
            request_id = _ident({"id": request_id}, "id")
        except BadRequest as e:
            return _json(request, 400, {"success": False, "error": str(e)})
        try:
            uuid.UUID(request_id)
        except ValueError:
            return _json(request, 404, {"success": False, "error": "unknown request"})
        try:
            req = yield self._requests.get(tenant, request_id)
        except Exception as e:
            self.log.warn("reading admin request failed: {err}", err=str(e))
            return _json(request, 500, {"success": False, "error": "internal error"})
        if req is None:
            return _json(request, 404, {"success": False, "error": "unknown request"})
        return self._request_answer(request, req)

    @app.route("/api/email/imap/reconnect", methods=["POST"])
    def reconnect(self, request):
        return self._admin_call(request, "reconnect")

    @app.route("/api/email/imap/resync", methods=["POST"])
    def resync(self, request):
        return self._admin_call(request, "resync")

    @app.route("/api/email/imap/test-connection", methods=["POST"])
    def test_connection(self, request):
        return self._admin_call(request, "test")

    @app.route("/api/email/imap/pause", methods=["POST"])
    def pause(self, request):
        return self._admin_call(request, "pause")

    @app.route("/api/email/imap/resume", methods=["POST"])
    def resume(self, request):
        return self._admin_call(request, "resume")

    @app.route("/api/email/oauth/imap/initiate", methods=["POST"])
    @defer.inlineCallbacks
    def oauth_initiate(self, request):
        denied = self._authorized(request)
        if denied is not None:
            return denied
        if self._oauth is None:
            return _json(request, 503, {"success": False, "error": "OAuth is not configured"})
        try:
            data = _body(request)
            tenant, provider = _ident(data, "tenant"), _ident(data, "providerId")
            redirect = data.get("redirectUri")
            if redirect is not None and not isinstance(redirect, str):
                raise BadRequest("redirectUri must be a string")
            result = yield self._oauth.initiate(tenant, provider, redirect)
        except BadRequest as e:
            return _json(request, 400, {"success": False, "error": str(e)})
        except OAuthError as e:
            return _json(request, e.status, {"success": False, "error": str(e), "code": e.code})
        except Exception as e:
            self.log.warn("OAuth initiate failed: {err}", err=type(e).__name__)
            return _json(request, 500, {"success": False, "error": "internal error"})
        return _json(request, 200, result)

    @app.route(START_PATH, methods=["GET"])
    @defer.inlineCallbacks
    def oauth_start(self, request):
        """``authUrl`` of initiate: bind the flow to this browser (a cookie),
        then on to the provider. No token: the signed state is the ticket."""
        if self._oauth is None:
            return _json(request, 503, {"success": False, "error": "OAuth is not configured"})
        values = request.args.get(b"state") or [b""]
        try:
            url, name, secret = yield self._oauth.start(values[0].decode("utf-8", "replace"))
        except OAuthError as e:
            return _oauth_refusal(request, e)
        except Exception as e:
            self.log.warn("OAuth start failed: {err}", err=type(e).__name__)
            return _json(request, 500, {"success": False, "error": "internal error"})
        _binding_cookie(request, name, secret, 600)
        request.redirect(url.encode("utf-8"))
        return b""

    @app.route(CALLBACK_PATH, methods=["GET"])
    @defer.inlineCallbacks
    def oauth_callback(self, request):
        def arg(name: str) -> Optional[str]:
            values = request.args.get(name.encode())
            if not values:
                return None
            return values[0].decode("utf-8", "replace")

        def cookie(name: str) -> Optional[str]:
            value = request.getCookie(name.encode("ascii"))
            return value.decode("ascii", "replace") if value else None

        if self._oauth is None:
            return _json(request, 503, {"success": False, "error": "OAuth is not configured"})
        try:
            target = yield self._oauth.callback(
                arg("code"), arg("state"), error=arg("error"), tenant=arg("tenant"),
                iss=arg("iss"), cookie=cookie,
            )
        except OAuthError as e:
            return _oauth_refusal(request, e)
        except Exception as e:
            self.log.warn("OAuth callback failed: {err}", err=type(e).__name__)
            return _json(request, 500, {"success": False, "error": "internal error"})
        if target:
            request.redirect(target.encode("utf-8"))
            return b""
        return _json(request, 200, {"success": True, "provider": "imap"})
