"""The OAuth2 token endpoint and where tokens are kept.

:class:`TokenClient` posts to a tenant-chosen token endpoint (https only, no
redirects, a capped body, one deadline) and classifies the answer;
:func:`store_tokens` persists a token response (refresh token in the secret
store, the access token sealed in the provider row). Used by the consent
flow and the credential source of :mod:`imapsvc.oauth`. Nothing here logs a
token, a code or a client secret.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Optional

from twisted.internet import defer
from twisted.python.failure import Failure

from imapsvc.core.netguard import InsecureURL, check_https_url
from imapsvc.egress import BodyTooLarge, read_capped
from imapsvc.model import ProviderConfig
from imapsvc.sealed_secrets import TEXT_PLAINTEXT, SecretBox, classify_text, refresh_token_name

#: Token-endpoint error codes that mean the grant or client is dead: an auth
#: failure for the supervisor (counts towards the auto-pause), not a retry.
AUTH_FAILURE_CODES = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})


class TokenEndpointError(Exception):
    """The token endpoint refused. ``auth_failure`` when the grant/client is
    no longer valid (the provider needs re-consent)."""

    def __init__(self, code: str, status: int):
        super().__init__(f"token endpoint refused: {code} (HTTP {status})")
        self.code = code
        self.status = status
        self.auth_failure = code in AUTH_FAILURE_CODES


def row_token_is_apps(box: Optional[SecretBox], provider: ProviderConfig) -> bool:
    """Whether ``access_token`` holds the main app's plaintext token (which
    the service must never overwrite or blank)."""
    if not provider.access_token:
        return False
    kind, _ = classify_text(
        box, provider.tenant, access_token_name(provider.provider_id), provider.access_token
    )
    return kind == TEXT_PLAINTEXT


def access_token_name(provider_id: str) -> str:
    # Associated-data name the sealed access token is bound to.
    return "imap_access_token_" + provider_id


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


#: Largest token-endpoint answer read (a token response is a few kB).
MAX_TOKEN_RESPONSE_BYTES = 256 * 1024


class TokenClient:
    """Posts to a token endpoint and classifies the answer.

    The endpoint is tenant-chosen, so: https only (http to loopback only
    with ``allow_http_loopback``), no redirects (a 307/308 would re-post the
    client secret and refresh token elsewhere), the body read up to
    :data:`MAX_TOKEN_RESPONSE_BYTES`, and one deadline for connect, answer
    and body together. Which addresses it may reach is the HTTP client's
    business (:func:`imapsvc.egress.guarded_http_client`).
    """

    def __init__(
        self,
        http: Any,
        timeout_s: float = 15.0,
        clock: Any = None,
        allow_http_loopback: bool = False,
        max_bytes: int = MAX_TOKEN_RESPONSE_BYTES,
    ):
        self._http = http
        self._timeout = timeout_s
        self._clock = clock
        self._allow_http_loopback = allow_http_loopback
        self._max_bytes = max_bytes

    def post(self, url: str, form: dict[str, str]) -> defer.Deferred:
        try:
            check_https_url(url, "token endpoint", self._allow_http_loopback)
        except InsecureURL:
            return defer.fail(TokenEndpointError("insecure_endpoint", 0))
        d = self._exchange(url, form)
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor as clock
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()  # reaches the pending request or body read: drops the connection

        timer = clock.callLater(self._timeout, expire)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if expired and isinstance(result, Failure):
                # Whatever the cancellation surfaced as (CancelledError,
                # ResponseNeverReceived, ...), it was the deadline.
                raise TokenEndpointError("timeout", 0)
            return result

        return d.addBoth(done)

    @defer.inlineCallbacks
    def _exchange(self, url: str, form: dict[str, str]):
        response = yield self._http.post(
            url,
            data=form,
            headers={"Accept": ["application/json"]},
            allow_redirects=False,
        )
        if 300 <= response.code < 400:
            # Not followed: drop the connection, say why.
            yield read_capped(response, 0).addErrback(lambda _f: None)
            raise TokenEndpointError("redirect_refused", response.code)
        try:
            body = yield read_capped(response, self._max_bytes)
        except BodyTooLarge:
            raise TokenEndpointError("response_too_large", response.code) from None
        try:
            data = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        if response.code != 200 or "error" in data:
            code = str(data.get("error") or "http_error")[:64]
            raise TokenEndpointError(code, response.code)
        if not isinstance(data.get("access_token"), str) or not data["access_token"]:
            raise TokenEndpointError("no_access_token", response.code)
        return data


@defer.inlineCallbacks
def store_tokens(
    store, secret_store, box: Optional[SecretBox], clock, provider: ProviderConfig, tokens,
    owner: Optional[str] = None,
):
    """Persist a token response: a (rotated) refresh token first, then the
    sealed access token with its expiry. Returns ``(access_token, expires_ts)``.
    With ``owner`` the access token write is fenced: refused while another
    worker holds the provider's lease."""
    refresh = tokens.get("refresh_token")
    if isinstance(refresh, str) and refresh:
        # SECRET_WRITE_PROVIDER (the app sees it too) or the sealed store;
        # never the row's plaintext column, which is the app's.
        yield secret_store.put(provider.tenant, refresh_token_name(provider.provider_id), refresh)
    try:
        lifetime = int(tokens.get("expires_in", 3600))
    except (TypeError, ValueError):
        lifetime = 3600
    expires = clock.seconds() + max(60, lifetime)
    access = tokens["access_token"]
    if box is not None and not row_token_is_apps(box, provider):
        sealed = box.seal_text(provider.tenant, access_token_name(provider.provider_id), access)
        if owner is None:
            yield store.save_access_token(provider.tenant, provider.provider_id, sealed,
                                          utc(expires))
        else:
            yield store.save_access_token(provider.tenant, provider.provider_id, sealed,
                                          utc(expires), owner=owner)
    # Else the row holds the app's own token: it stays as the app left it;
    # the new token lives in the credential source's memory until it expires.
    return access, expires
