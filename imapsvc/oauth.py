"""OAuth2 authorization-code flow for IMAP mailboxes, and the credential
source the folders log in with.

HTTP goes through an injected treq-style client (``treq`` itself, an
``HTTPClient``, or ``StubTreq`` in tests). Secrets go through the secret
store; the access token is kept sealed in ``access_token``. Nothing here
logs a token, a code, a verifier or a client secret.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Callable, Optional, Sequence

import treq
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapsvc.core import oauth_state as o
from imapsvc.interfaces import ICredentialSource
from imapsvc.model import Credentials, ProviderConfig
from imapsvc.secrets import (
    SecretBox,
    SecretDecryptError,
    client_secret_name,
    password_name,
    refresh_token_name,
)

CALLBACK_PATH = "/api/email/oauth/imap/callback"
#: Refresh before connecting when the token expires within this margin.
REFRESH_MARGIN_S = 300
#: Token-endpoint error codes that mean the grant or client is dead: an auth
#: failure for the supervisor (counts towards the auto-pause), not a retry.
AUTH_FAILURE_CODES = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})
#: The auth-failure code of a provider still waiting for its first consent.
AWAITING_CONSENT = "awaiting_consent"


class OAuthError(Exception):
    """A flow step failed; ``status`` is the HTTP status to answer with and
    the message is safe to show (no secrets)."""

    def __init__(self, status: int, message: str, code: str = "oauth_error"):
        super().__init__(message)
        self.status = status
        self.code = code


class TokenEndpointError(Exception):
    """The token endpoint refused. ``auth_failure`` when the grant/client is
    no longer valid (the provider needs re-consent)."""

    def __init__(self, code: str, status: int):
        super().__init__(f"token endpoint refused: {code} (HTTP {status})")
        self.code = code
        self.status = status
        self.auth_failure = code in AUTH_FAILURE_CODES


class MissingCredentials(Exception):
    """No password / refresh token is stored for a provider."""

    auth_failure = True
    code = "missing_credentials"


class NoSecretKey(Exception):
    """``IMAPSVC_SECRET_KEY`` is not configured: no stored credential can be
    opened. A configuration problem, not an authentication failure."""

    auth_failure = False
    code = "no_secret_key"


class AwaitingConsent(MissingCredentials):
    """An OAuth2 provider that was never consented to (no token of any kind
    yet): it waits for the operator, and does not count towards the
    auto-pause for repeated authentication failures."""

    code = AWAITING_CONSENT


def access_token_name(provider_id: str) -> str:
    # Associated-data name the sealed access token is bound to.
    return "imap_access_token_" + provider_id


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


class TokenClient:
    """Posts to a token endpoint and classifies the answer."""

    def __init__(self, http: Any, timeout_s: float = 15.0):
        self._http = http
        self._timeout = timeout_s

    @defer.inlineCallbacks
    def post(self, url: str, form: dict[str, str]):
        response = yield self._http.post(
            url,
            data=form,
            headers={"Accept": ["application/json"]},
            timeout=self._timeout,
        )
        body = yield treq.content(response)
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


class OAuthFlow:
    """Initiate and callback of the authorization-code flow with PKCE."""

    log = Logger()

    def __init__(
        self,
        store,
        secret_store,
        box: SecretBox,
        http: Any,
        clock,
        state_key: bytes,
        public_base_url: str,
        redirect_allowlist: Sequence[str],
        on_connected: Optional[Callable[[str, str], Any]] = None,
    ):
        self._store = store
        self._secrets = secret_store
        self._box = box
        self._tokens = TokenClient(http)
        self._clock = clock
        self._key = state_key
        self._base = public_base_url.rstrip("/")
        self._allow = list(redirect_allowlist)
        self._on_connected = on_connected

    @property
    def redirect_uri(self) -> str:
        return self._base + CALLBACK_PATH

    @defer.inlineCallbacks
    def _oauth_provider(self, tenant: str, provider_id: str):
        provider = yield self._store.get_provider(tenant, provider_id)
        if provider is None:
            raise OAuthError(404, "unknown provider", "unknown_provider")
        if provider.auth_type != "oauth2":
            raise OAuthError(400, "provider does not use OAuth2", "not_oauth2")
        if not provider.oauth_client_id:
            raise OAuthError(400, "provider has no OAuth client id", "no_client_id")
        try:
            urls = o.endpoints(
                provider.host,
                provider.oauth_authorize_url,
                provider.oauth_token_url,
                provider.oauth_scopes,
            )
        except ValueError as e:
            raise OAuthError(400, str(e), "no_endpoints") from e
        return provider, urls

    @defer.inlineCallbacks
    def initiate(self, tenant: str, provider_id: str, return_url: Optional[str] = None):
        if return_url and not o.redirect_allowed(return_url, self._allow):
            raise OAuthError(400, "redirect URL is not in the allowlist", "redirect_refused")
        provider, (auth_url, _token_url, scopes) = yield self._oauth_provider(tenant, provider_id)
        nonce = o.new_nonce()
        verifier, challenge = o.pkce_pair()
        expires = int(self._clock.seconds()) + o.STATE_TTL_S
        yield self._store.put_oauth_state(tenant, nonce, verifier, _utc(expires))
        state = o.sign_state(
            self._key, o.StateClaims(tenant, provider_id, nonce, expires, return_url or None)
        )
        url = o.authorize_url(
            auth_url,
            provider.oauth_client_id,
            self.redirect_uri,
            scopes,
            state,
            challenge,
            login_hint=provider.username or None,
        )
        return {"success": True, "authUrl": url, "provider": "imap", "state": state}

    @defer.inlineCallbacks
    def callback(
        self,
        code: Optional[str],
        state: Optional[str],
        error: Optional[str] = None,
        tenant: Optional[str] = None,
    ):
        """Finish the flow. Returns the URL to redirect to, or ``None`` when
        no return URL was given (answer with a plain success page)."""
        try:
            claims = o.verify_state(self._key, state or "", self._clock.seconds())
        except o.StateError as e:
            raise OAuthError(400, str(e), "invalid_state") from e
        if tenant is not None and tenant != claims.tenant:
            raise OAuthError(400, "state belongs to another tenant", "invalid_state")
        # Single use: consumed before anything else can fail, so a replayed
        # state is refused even when the first attempt did not finish.
        verifier = yield self._store.take_oauth_state(claims.tenant, claims.nonce)
        if verifier is None:
            raise OAuthError(400, "state was already used or is unknown", "invalid_state")
        if error:
            raise OAuthError(400, "authorization was not granted", "access_denied")
        if not code:
            raise OAuthError(400, "missing authorization code", "missing_code")
        provider, (_auth, token_url, _scopes) = yield self._oauth_provider(
            claims.tenant, claims.provider_id
        )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": provider.oauth_client_id,
            "code_verifier": verifier,
        }
        client_secret = yield self._secrets.get(
            provider.tenant, client_secret_name(provider.provider_id)
        )
        if client_secret:
            form["client_secret"] = client_secret
        try:
            tokens = yield self._tokens.post(token_url, form)
        except TokenEndpointError as e:
            raise OAuthError(502, f"token exchange failed: {e.code}", "token_exchange") from e
        except Exception as e:
            raise OAuthError(502, "token endpoint unreachable", "token_exchange") from e
        yield store_tokens(self._store, self._secrets, self._box, self._clock, provider, tokens)
        yield self._store.reset_auth_failures(provider.tenant, provider.provider_id)
        yield self._store.set_provider_status(provider.tenant, provider.provider_id, "connected")
        if self._on_connected is not None:
            self._on_connected(provider.tenant, provider.provider_id)
        self.log.info(
            "OAuth tokens stored for provider {tenant}/{provider}",
            tenant=provider.tenant,
            provider=provider.provider_id,
        )
        return claims.return_url


@defer.inlineCallbacks
def store_tokens(store, secret_store, box: SecretBox, clock, provider: ProviderConfig, tokens,
                 owner: Optional[str] = None):
    """Persist a token response: a (rotated) refresh token first, then the
    sealed access token with its expiry. Returns ``(access_token, expires_ts)``.
    With ``owner`` the access token write is fenced: refused while another
    worker holds the provider's lease."""
    refresh = tokens.get("refresh_token")
    if isinstance(refresh, str) and refresh:
        yield secret_store.put(provider.tenant, refresh_token_name(provider.provider_id), refresh)
    try:
        lifetime = int(tokens.get("expires_in", 3600))
    except (TypeError, ValueError):
        lifetime = 3600
    expires = clock.seconds() + max(60, lifetime)
    access = tokens["access_token"]
    sealed = box.seal_text(provider.tenant, access_token_name(provider.provider_id), access)
    if owner is None:
        yield store.save_access_token(provider.tenant, provider.provider_id, sealed,
                                      _utc(expires))
    else:
        yield store.save_access_token(provider.tenant, provider.provider_id, sealed,
                                      _utc(expires), owner=owner)
    return access, expires


@implementer(ICredentialSource)
class CredentialSource:
    """Passwords from the secret store; OAuth2 access tokens refreshed when
    they expire within :data:`REFRESH_MARGIN_S`, one refresh at a time per
    provider."""

    log = Logger()

    def __init__(self, store, secret_store, box: Optional[SecretBox], http: Any, clock,
                 owner: Optional[str] = None):
        self._store = store
        #: This worker's lease owner id: refreshed tokens are written fenced.
        self._owner = owner
        self._secrets = secret_store
        self._box = box
        self._tokens = TokenClient(http)
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._inflight: dict[tuple[str, str], list[defer.Deferred]] = {}

    def token_expiry(self, provider: ProviderConfig) -> Optional[float]:
        """When the access token handed out last expires (for refresh-ahead)."""
        cached = self._cache.get(provider.key)
        return cached[1] if cached else None

    @defer.inlineCallbacks
    def credentials(self, provider: ProviderConfig):
        if self._secrets is None or self._box is None:
            raise NoSecretKey("IMAPSVC_SECRET_KEY is not set: stored credentials cannot be read")
        if provider.auth_type == "oauth2":
            token = yield self.access_token(provider)
            return Credentials("xoauth2", provider.username, token)
        password = yield self._secrets.get(provider.tenant, password_name(provider.provider_id))
        if password is None:
            raise MissingCredentials("no password is stored for this provider")
        return Credentials("password", provider.username, password)

    def access_token(self, provider: ProviderConfig, force_refresh: bool = False):
        now = self._clock.seconds()
        if not force_refresh:
            # The later-expiring of this process's cache and the stored row:
            # the row is newer after a re-consent, the cache after a refresh
            # (the row in ``provider`` may be a discovery pass behind).
            known = [c for c in (self._cache.get(provider.key), self._from_row(provider)) if c]
            cached = max(known, key=lambda c: c[1]) if known else None
            if cached and cached[1] - now > REFRESH_MARGIN_S:
                # Remember it so token_expiry() answers for this token too.
                self._cache[provider.key] = cached
                return defer.succeed(cached[0])
        waiter: defer.Deferred = defer.Deferred()
        waiters = self._inflight.get(provider.key)
        if waiters is not None:
            # A refresh is already running for this provider: share it.
            waiters.append(waiter)
            return waiter
        self._inflight[provider.key] = [waiter]

        def done(result):
            for w in self._inflight.pop(provider.key, []):
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        self._refresh(provider).addBoth(done)
        return waiter

    def _from_row(self, provider: ProviderConfig) -> Optional[tuple[str, float]]:
        if self._box is None or not provider.access_token or provider.token_expires_at is None:
            return None
        try:
            token = self._box.open_text(
                provider.tenant, access_token_name(provider.provider_id), provider.access_token
            )
        except SecretDecryptError:
            # A plaintext token written by another app, or an old key: refresh.
            return None
        return token, provider.token_expires_at.timestamp()

    @defer.inlineCallbacks
    def _refresh(self, provider: ProviderConfig):
        if self._secrets is None or self._box is None:
            raise NoSecretKey("IMAPSVC_SECRET_KEY is not set: tokens cannot be stored")
        refresh = yield self._secrets.get(
            provider.tenant, refresh_token_name(provider.provider_id)
        )
        if not refresh:
            if not provider.access_token:
                raise AwaitingConsent("waiting for the mailbox owner's OAuth consent")
            raise MissingCredentials("no refresh token is stored; re-consent is needed")
        _a, token_url, _s = o.endpoints(
            provider.host,
            provider.oauth_authorize_url,
            provider.oauth_token_url,
            provider.oauth_scopes,
        )
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": provider.oauth_client_id or "",
        }
        secret = yield self._secrets.get(provider.tenant, client_secret_name(provider.provider_id))
        if secret:
            form["client_secret"] = secret
        tokens = yield self._tokens.post(token_url, form)
        access, expires = yield store_tokens(
            self._store, self._secrets, self._box, self._clock, provider, tokens, self._owner
        )
        self._cache[provider.key] = (access, expires)
        self.log.info(
            "access token refreshed for {tenant}/{provider}, valid {seconds}s",
            tenant=provider.tenant,
            provider=provider.provider_id,
            seconds=int(expires - self._clock.seconds()),
        )
        return access
